"""A procedural panoptic dataset written in COCO panoptic format (``panoptix synth``).

Scenes: 2-4 stuff regions (sky, wall, water, ground) with procedural textures and irregular
boundaries, then 2-8 thing instances of six shape classes (disc, square, triangle, ring, cross,
star) whose colour, texture, size (8 px to half the image) and rotation vary within a class, so
only shape tells the class. Things occlude each other; some images carry a crowd region (a
cluster of small objects annotated as one ``iscrowd=1`` segment) and VOID clutter blobs.
``occlusion="heavy"`` adds frequent small-on-large pairs: a rare class (star, cross) sitting on a
frequent one (disc, square), the tie-on-person case of OANet (Liu et al. 2019).

Output layout (COCO-like)::

    OUT/categories.json
    OUT/{split}/000001.jpg ...
    OUT/annotations/panoptic_{split}.json
    OUT/annotations/panoptic_{split}/000001.png ...

Every image is a pure function of (seed, split, index).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from panoptix.data.meta import Category, DatasetMeta
from panoptix.data.png import write_id_png
from panoptix.data.sample import bbox_of_mask
from panoptix.data.spec import coco_layout

THING_CLASSES = ("disc", "square", "triangle", "ring", "cross", "star")
# Frequent to rare: the heavy-occlusion pairs put a rare class on top of a frequent one.
THING_FREQUENCY = np.array([0.28, 0.22, 0.18, 0.14, 0.10, 0.08])
STUFF_CLASSES = ("sky", "wall", "water", "ground")
# Vertical prior of each stuff class (positive: prefers the top of the image).
STUFF_PRIOR = np.array([1.6, 0.2, -0.8, -1.4])
SPLIT_CODES = {"train": 1, "val": 2, "test": 3}

_THING_COLORS = [(220, 20, 60), (0, 130, 200), (255, 180, 0), (60, 180, 75), (145, 30, 180), (245, 130, 48)]
_STUFF_COLORS = [(135, 206, 235), (150, 100, 90), (30, 70, 160), (110, 150, 60)]


def synthetic_meta() -> DatasetMeta:
    """Categories of the synthetic set: things 1..6, stuff 11..14 (ids deliberately not contiguous)."""
    cats = [Category(i + 1, n, True, _THING_COLORS[i]) for i, n in enumerate(THING_CLASSES)]
    cats += [Category(11 + i, n, False, _STUFF_COLORS[i]) for i, n in enumerate(STUFF_CLASSES)]
    return DatasetMeta(cats, name="synthetic")


@dataclass(frozen=True)
class SynthConfig:
    size: int = 128                    # image height (and width unless ``width`` is given)
    width: int | None = None
    occlusion: str = "normal"          # "normal" or "heavy"
    min_things: int = 2
    max_things: int = 8
    min_thing_px: int = 8              # smallest object extent
    crowd_prob: float = 0.25
    void_prob: float = 0.5
    min_visible: float = 0.25          # drop an instance when less than this fraction stays visible

    def __post_init__(self) -> None:
        if self.occlusion not in ("normal", "heavy"):
            raise ValueError(f"occlusion must be 'normal' or 'heavy', got {self.occlusion!r}")
        if min(self.size, self.width or self.size) < 32:
            raise ValueError(f"image sides must be at least 32 px, got {self.size}x{self.width}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.size, self.width or self.size


# --------------------------------------------------------------------------- noise and textures
def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], grid: int) -> np.ndarray:
    """(H, W) float32 noise with about ``grid`` blobs per side, roughly unit variance."""
    g = rng.standard_normal((grid, grid)).astype(np.float32)
    return np.asarray(Image.fromarray(g, mode="F").resize((shape[1], shape[0]), Image.BICUBIC))


def _random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(20, 235, size=3)


def _stuff_texture(rng: np.random.Generator, kind: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """(H, W, 3) float texture of stuff class ``kind`` with a per-image colour jitter."""
    jitter = rng.uniform(-25, 25, size=3)
    shape = yy.shape
    if kind == 0:    # sky: vertical gradient with soft clouds
        top, bottom = np.array([70, 130, 220]) + jitter, np.array([170, 210, 245]) + jitter
        t = (yy / shape[0])[..., None]
        img = top * (1 - t) + bottom * t
        clouds = np.clip(_smooth_noise(rng, shape, 5), 0, None)[..., None]
        return img + 60 * clouds
    if kind == 1:    # wall: bricks with mortar lines
        base = np.array([150, 85, 70]) * rng.uniform(0.7, 1.2) + jitter
        bh = rng.integers(5, 10)
        bw = 2 * bh
        row = yy // bh
        mortar = (yy % bh == 0) | (((xx + (row % 2) * (bw // 2)) % bw) == 0)
        shades = rng.uniform(-20, 20, size=(shape[0] // bh + 2, shape[1] // bw + 3))
        shade = shades[row, (xx + (row % 2) * (bw // 2)) // bw]
        img = base + shade[..., None]
        return np.where(mortar[..., None], np.array([200, 200, 190]), img)
    if kind == 2:    # water: wavy stripes
        base = np.array([30, 80, 150]) + jitter
        f1, f2 = rng.uniform(0.3, 0.6), rng.uniform(0.05, 0.15)
        waves = np.sin(yy * f1 + 3 * np.sin(xx * f2 + rng.uniform(0, 6)))
        return base + 35 * waves[..., None]
    # ground: speckled earth or grass
    base = np.array([120, 95, 60]) if rng.random() < 0.5 else np.array([80, 130, 50])
    speckle = rng.normal(0, 18, size=(*shape, 1))
    return base + jitter + speckle + 25 * _smooth_noise(rng, shape, 8)[..., None]


def _thing_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float texture for one object: solid, stripes, checker, dots or gradient."""
    c1, c2 = _random_color(rng), _random_color(rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(0, 5)
    if kind == 0:
        t = np.zeros((h, w), np.float32)
    elif kind == 1:
        ang, period = rng.uniform(0, np.pi), rng.uniform(3, 8)
        t = (np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * 2 * np.pi / period) > 0).astype(np.float32)
    elif kind == 2:
        p = rng.integers(2, 6)
        t = (((yy // p) + (xx // p)) % 2).astype(np.float32)
    elif kind == 3:
        p = rng.uniform(3, 7)
        t = ((np.sin(xx * 2 * np.pi / p) * np.sin(yy * 2 * np.pi / p)) > 0.5).astype(np.float32)
    else:
        t = xx / max(w - 1, 1)
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


# --------------------------------------------------------------------------- shapes
def _shape_mask(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mask of thing class ``kind`` in normalised, rotated coordinates (u, v) in about [-1, 1]."""
    if kind == 0:                                   # disc
        return u * u + v * v <= 1.0
    if kind == 1:                                   # square
        return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
    if kind == 2:                                   # triangle (pointing up in its own frame)
        return (v <= 0.75) & (v >= 1.75 * np.abs(u) - 1.0)
    if kind == 3:                                   # ring
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.36)
    if kind == 4:                                   # cross
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    # star: five points, radius alternating between 1 and 0.45
    phi = np.arctan2(v, u) + np.pi / 2
    frac = np.abs(((phi * 5 / (2 * np.pi)) % 1.0) - 0.5) * 2     # 1 at the points, 0 between
    return np.sqrt(u * u + v * v) <= 0.45 + 0.55 * frac


@dataclass
class _Obj:
    kind: int
    cy: float
    cx: float
    radius: float
    angle: float
    aspect: float


def _draw(obj: _Obj, shape: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray]:
    """Window (slices) and boolean mask of one object clipped to the (H, W) image."""
    r = obj.radius * max(obj.aspect, 1.0) + 1
    y0, y1 = max(int(obj.cy - r), 0), min(int(obj.cy + r) + 2, shape[0])
    x0, x1 = max(int(obj.cx - r), 0), min(int(obj.cx + r) + 2, shape[1])
    if y1 <= y0 or x1 <= x0:
        return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), bool)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = (yy + 0.5 - obj.cy) / obj.radius, (xx + 0.5 - obj.cx) / obj.radius
    c, si = np.cos(obj.angle), np.sin(obj.angle)
    u, v = (c * dx + si * dy) / obj.aspect, -si * dx + c * dy
    return (slice(y0, y1), slice(x0, x1)), _shape_mask(obj.kind, u, v)


def _random_obj(rng: np.random.Generator, shape: tuple[int, int], cfg: SynthConfig, kind: int | None = None,
                extent: float | None = None) -> _Obj:
    if kind is None:
        kind = int(rng.choice(len(THING_CLASSES), p=THING_FREQUENCY))
    if extent is None:
        extent = float(np.exp(rng.uniform(np.log(cfg.min_thing_px), np.log(min(shape) / 2))))
    return _Obj(kind, rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), extent / 2, rng.uniform(0, 2 * np.pi),
                rng.uniform(0.75, 1.25) if kind in (0, 1) else 1.0)


# --------------------------------------------------------------------------- one scene
def render_scene(rng: np.random.Generator, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Render one scene: stuff layout, VOID clutter, an optional crowd, then the things, painted back to
    front (the random draws happen in that order, so a seed always gives the same scene).

    Returns:
        image (H, W, 3) uint8, ids (H, W) int32 (0 = VOID), segments_info (COCO dicts with
        id, category_id, iscrowd, bbox, area).
    """
    meta = synthetic_meta()
    yy, xx = np.mgrid[0:cfg.shape[0], 0:cfg.shape[1]]
    kinds, stuff_label, image = _stuff_layer(rng, cfg.shape, yy, xx)
    # owner: -1 stuff, -2 VOID, >= 0 index into `owners` (thing instances and the crowd)
    owner = np.full(cfg.shape, -1, np.int64)
    owners: list[tuple[int, bool]] = []                       # (category_id, iscrowd)
    if rng.random() < cfg.void_prob:
        _paint_void_blobs(rng, cfg.shape, yy, xx, owner, image)
    if rng.random() < cfg.crowd_prob:
        kind = int(rng.integers(0, len(THING_CLASSES)))
        owners.append((meta.thing_ids[kind], True))
        _paint_crowd(rng, cfg.shape, kind, owner, image)
    for kind, win, m in _visible_things(_scene_objects(rng, cfg), cfg):
        owners.append((meta.thing_ids[kind], False))
        owner[win][m] = len(owners) - 1
        image[win][m] = _thing_texture(rng, *m.shape)[m]

    # Segment ids: things and the crowd by owner index, stuff by class; remove fully hidden ones.
    ids = np.zeros(cfg.shape, np.int32)
    segments: list[dict[str, Any]] = []
    for i, (cat, crowd) in enumerate(owners):
        _add_segment(ids, owner == i, cat, crowd, segments)
    for k in kinds:
        _add_segment(ids, (owner == -1) & (stuff_label == k), meta.stuff_ids[int(k)], False, segments)
    image += rng.normal(0, 4, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), ids, segments


def _stuff_layer(rng: np.random.Generator, shape: tuple[int, int], yy: np.ndarray, xx: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stuff classes used, (H, W) stuff class map, (H, W, 3) float image): the argmax of smooth random
    fields plus a vertical prior per class, each region filled with its class's texture."""
    kinds = np.sort(rng.choice(len(STUFF_CLASSES), size=int(rng.integers(2, 5)), replace=False))
    height = 1.0 - 2.0 * (yy + 0.5) / shape[0]
    fields = np.stack([STUFF_PRIOR[k] * height + 0.8 * _smooth_noise(rng, shape, 3)
                       + 0.25 * _smooth_noise(rng, shape, 9) for k in kinds])
    stuff_label = kinds[np.argmax(fields, axis=0)]
    image = np.zeros((*shape, 3), np.float64)
    for k in kinds:
        sel = stuff_label == k
        if sel.any():
            image[sel] = _stuff_texture(rng, int(k), yy, xx)[sel]
    return kinds, stuff_label, image


def _paint_void_blobs(rng: np.random.Generator, shape: tuple[int, int], yy: np.ndarray, xx: np.ndarray,
                      owner: np.ndarray, image: np.ndarray) -> None:
    """1-3 VOID clutter blobs: ``owner`` -2 and random grey noise in ``image``."""
    h, w = shape
    for _ in range(int(rng.integers(1, 4))):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, max(4, min(shape) / 12))
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (_smooth_noise(rng, shape, 12) > -0.3)
        owner[blob] = -2
        image[blob] = rng.uniform(60, 200) + rng.normal(0, 30, size=(int(blob.sum()), 3))


def _paint_crowd(rng: np.random.Generator, shape: tuple[int, int], kind: int, owner: np.ndarray,
                 image: np.ndarray) -> None:
    """A crowd: 6-12 small objects of one class around a centre, all owner 0 (one iscrowd segment)."""
    h, w, s = shape[0], shape[1], min(shape)
    cy, cx, spread = rng.uniform(0.2 * h, 0.8 * h), rng.uniform(0.2 * w, 0.8 * w), rng.uniform(s / 12, s / 6)
    for _ in range(int(rng.integers(6, 13))):
        obj = _Obj(kind, cy + rng.normal(0, spread), cx + rng.normal(0, spread), rng.uniform(3, 6),
                   rng.uniform(0, 2 * np.pi), 1.0)
        win, m = _draw(obj, shape)
        if m.size:
            owner[win][m] = 0
            image[win][m] = _thing_texture(rng, *m.shape)[m]


def _scene_objects(rng: np.random.Generator, cfg: SynthConfig) -> list[_Obj]:
    """The scene's things, back to front; with heavy occlusion, 0-2 extra pairs of a small rare object
    on a large frequent one."""
    shape, s = cfg.shape, min(cfg.shape)
    objs = [_random_obj(rng, shape, cfg) for _ in range(int(rng.integers(cfg.min_things, cfg.max_things + 1)))]
    if cfg.occlusion == "heavy":
        for _ in range(int(rng.integers(1, 3)) if rng.random() < 0.7 else 0):
            big = _random_obj(rng, shape, cfg, kind=int(rng.integers(0, 2)), extent=rng.uniform(0.3, 0.5) * s)
            small = _random_obj(rng, shape, cfg, kind=int(rng.integers(4, 6)), extent=rng.uniform(0.1, 0.2) * s)
            small.cy = big.cy + rng.uniform(-0.3, 0.3) * big.radius
            small.cx = big.cx + rng.uniform(-0.3, 0.3) * big.radius
            objs += [big, small]
    return objs


def _visible_things(objs: list[_Obj], cfg: SynthConfig) -> list[tuple[int, tuple[slice, slice], np.ndarray]]:
    """(class, window, mask) of the objects that stay visible enough once all are painted back to front
    (at least ``min_visible`` of their pixels, and 10)."""
    drawn = [(obj, *_draw(obj, cfg.shape)) for obj in objs]
    paint = np.full(cfg.shape, -1, np.int64)
    for i, (_, win, m) in enumerate(drawn):
        paint[win][m] = i
    visible = np.bincount(paint[paint >= 0], minlength=len(drawn))
    return [(obj.kind, win, m) for i, (obj, win, m) in enumerate(drawn)
            if int(m.sum()) > 0 and visible[i] >= max(cfg.min_visible * int(m.sum()), 10)]


def _add_segment(ids: np.ndarray, mask: np.ndarray, category_id: int, iscrowd: bool,
                 segments: list[dict[str, Any]]) -> None:
    area = int(mask.sum())
    if area == 0:
        return
    seg_id = len(segments) + 1
    ids[mask] = seg_id
    segments.append({"id": seg_id, "category_id": int(category_id), "iscrowd": int(iscrowd),
                     "bbox": list(bbox_of_mask(mask)), "area": area})


# --------------------------------------------------------------------------- dataset writer
def _write_one(args: tuple) -> dict[str, Any]:
    out, split, index, seed, cfg = args
    rng = np.random.default_rng([seed, SPLIT_CODES.get(split, 9), index])
    image, ids, segments = render_scene(rng, cfg)
    name = f"{index + 1:06d}"
    Image.fromarray(image).save(out / split / f"{name}.jpg", quality=92)
    write_id_png(out / "annotations" / f"panoptic_{split}" / f"{name}.png", ids)
    return {"image": {"id": index + 1, "file_name": f"{name}.jpg", "height": cfg.shape[0], "width": cfg.shape[1]},
            "annotation": {"image_id": index + 1, "file_name": f"{name}.png", "segments_info": segments}}


def write_synthetic(out: str | Path, splits: dict[str, int], seed: int = 0, cfg: SynthConfig = SynthConfig(),
                    workers: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Write a synthetic COCO panoptic dataset.

    Args:
        out: output folder.
        splits: split name -> number of images, e.g. ``{"train": 1000, "val": 200}``.
        workers: processes (default: all cores).
    Returns:
        A summary: images and segments per split, paths.
    """
    from tqdm import tqdm

    out = Path(out)
    meta = synthetic_meta()
    out.mkdir(parents=True, exist_ok=True)
    (out / "categories.json").write_text(json.dumps(meta.to_json(), indent=1))
    workers = workers or os.cpu_count() or 1
    summary: dict[str, Any] = {"root": str(out), "seed": seed, "height": cfg.shape[0], "width": cfg.shape[1],
                               "occlusion": cfg.occlusion, "splits": {}}
    for split, n in splits.items():
        (out / split).mkdir(exist_ok=True)
        (out / "annotations" / f"panoptic_{split}").mkdir(parents=True, exist_ok=True)
        jobs = [(out, split, i, seed, cfg) for i in range(n)]
        with tqdm(total=n, desc=f"synth {split}", unit="img", disable=not progress) as bar:
            if workers > 1 and n > 1:
                with mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn").Pool(workers) as pool:
                    rows = []
                    for row in pool.imap(_write_one, jobs, chunksize=8):
                        rows.append(row)
                        bar.update()
            else:
                rows = []
                for job in jobs:
                    rows.append(_write_one(job))
                    bar.update()
        data = {"images": [r["image"] for r in rows], "annotations": [r["annotation"] for r in rows],
                "categories": meta.to_json()}
        (out / "annotations" / f"panoptic_{split}.json").write_text(json.dumps(data))
        summary["splits"][split] = {"images": n, "segments": sum(len(r["annotation"]["segments_info"]) for r in rows),
                                    "crowd": sum(s["iscrowd"] for r in rows for s in r["annotation"]["segments_info"])}
    return summary


def synthetic_paths(root: str | Path, split: str) -> dict[str, Path]:
    """Paths of one split of a synthetic dataset written by `write_synthetic`: COCO's layout."""
    return coco_layout(root, split)
