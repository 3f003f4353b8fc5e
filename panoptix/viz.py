"""Drawing panoptic maps: coloured overlays with boundaries and labels, and GT | prediction pairs.

Stuff is drawn in its category colour, each thing instance in a distinct shade of its category
colour (the k-th instance of a category in an image gets the k-th shade), segment boundaries as
thin white lines. VOID is hatched with black diagonals, so it passes neither for the image nor
for a segment. `annotate` adds an integer upscale (for small images) and a legend of the
categories present.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from panoptix.data.meta import DatasetMeta
from panoptix.data.sample import map_ids


def _seg_fields(seg: Any) -> tuple[int, int]:
    if isinstance(seg, dict):
        return int(seg["id"]), int(seg["category_id"])
    return int(seg.id), int(seg.category_id)


def _shade(color: tuple[int, int, int], k: int) -> np.ndarray:
    """The k-th shade of a colour: k = 0 is the colour itself, later ones are jittered by up to 60."""
    if k == 0:
        return np.array(color, dtype=np.int64)
    jitter = np.random.default_rng(k).integers(-60, 61, size=3)
    return np.clip(np.array(color) + jitter, 0, 255)


def colorize(ids: np.ndarray, segments: Iterable[Any], meta: DatasetMeta) -> np.ndarray:
    """(H, W, 3) uint8 colour image of a segment-id map (VOID black)."""
    segs = [_seg_fields(s) for s in segments]
    palette = [np.zeros(3, np.int64)]
    counts: dict[int, int] = {}
    for _, cat in segs:
        c = meta.by_id[cat] if cat in meta else None
        if c is None:
            palette.append(np.array([255, 255, 255]))
            continue
        k = counts.get(cat, 0) if c.isthing else 0
        counts[cat] = k + 1
        palette.append(_shade(c.color, k))
    index = map_ids(np.asarray(ids), np.array([s for s, _ in segs], np.int64), np.arange(1, len(segs) + 1), 0)
    return np.stack(palette).astype(np.uint8)[index]


def boundaries(ids: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose right or lower neighbour belongs to another segment."""
    ids = np.asarray(ids)
    edge = np.zeros(ids.shape, bool)
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge[:-1, :] |= ids[:-1, :] != ids[1:, :]
    return edge


VOID_HATCH = 4  # one black diagonal in every 4 over VOID pixels


def overlay(image: np.ndarray | None, ids: np.ndarray, segments: Iterable[Any], meta: DatasetMeta,
            alpha: float = 0.55, draw_boundaries: bool = True, labels: bool = False) -> np.ndarray:
    """Blend the coloured map over ``image`` (H, W, 3 uint8; grey when None), VOID hatched. Returns
    (H, W, 3) uint8."""
    segments = list(segments)
    ids = np.asarray(ids)
    colors = colorize(ids, segments, meta).astype(np.float32)
    base = np.full(colors.shape, 128, np.float32) if image is None else np.asarray(image, np.float32)
    if base.shape != colors.shape:
        raise ValueError(f"image is {base.shape[1]}x{base.shape[0]} but the map is {ids.shape[1]}x{ids.shape[0]}")
    out = np.where((ids != 0)[..., None], (1 - alpha) * base + alpha * colors, base)
    yy, xx = np.indices(ids.shape)
    out[(ids == 0) & ((yy + xx) % VOID_HATCH == 0)] = 0
    if draw_boundaries:
        out[boundaries(ids)] = 255
    out = out.astype(np.uint8)
    if labels:
        out = _draw_labels(out, ids, segments, meta)
    return out


def _draw_labels(img: np.ndarray, ids: np.ndarray, segments: list[Any], meta: DatasetMeta) -> np.ndarray:
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default()
    for seg in segments:
        sid, cat = _seg_fields(seg)
        ys, xs = np.nonzero(ids == sid)
        if ys.size == 0:
            continue
        name = meta.by_id[cat].name if cat in meta else str(cat)
        x, y = int(xs.mean()), int(ys.mean())
        draw.text((x, y), name, fill=(255, 255, 255), font=font, anchor="mm", stroke_width=1, stroke_fill=(0, 0, 0))
    return np.asarray(pil)


def legend(segments: Iterable[Any], meta: DatasetMeta, width: int) -> np.ndarray:
    """(h, width, 3) uint8 strip: a colour swatch and the name of each category among ``segments``
    (things, then stuff, by name), wrapped into rows."""
    known = [meta.by_id[c] for c in {cat for _, cat in map(_seg_fields, segments)} if c in meta]
    items = [(c.name, c.color) for c in sorted(known, key=lambda c: (not c.isthing, c.name))]
    font = ImageFont.load_default()
    placed, x, y = [], 4, 2  # (x, y, name, colour), laid out once: swatch, name, gap; wrapped at ``width``
    for name, color in items:
        w = 14 + int(font.getlength(name)) + 10
        if x > 4 and x + w > width:
            x, y = 4, y + 14
        placed.append((x, y, name, color))
        x += w
    canvas = Image.new("RGB", (width, y + 16), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for x, y, name, color in placed:
        draw.rectangle((x, y + 1, x + 10, y + 11), fill=tuple(int(v) for v in color))
        draw.text((x + 14, y), name, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def annotate(image: np.ndarray | None, ids: np.ndarray, segments: Iterable[Any], meta: DatasetMeta,
             labels: bool = False, scale: int = 1, with_legend: bool = True) -> np.ndarray:
    """`overlay` upscaled ``scale`` times (nearest neighbour: a 64 px image is readable at 4) with a
    `legend` below. Returns (scale H + legend, scale W, 3) uint8."""
    segments = list(segments)
    if scale > 1:
        ids = np.repeat(np.repeat(np.asarray(ids), scale, 0), scale, 1)
        image = None if image is None else np.repeat(np.repeat(np.asarray(image), scale, 0), scale, 1)
    out = overlay(image, ids, segments, meta, labels=labels)
    return np.concatenate([out, legend(segments, meta, out.shape[1])]) if with_legend and segments else out


def side_by_side(image: np.ndarray | None, gt: tuple[np.ndarray, Iterable[Any]], pred: tuple[np.ndarray, Iterable[Any]],
                 meta: DatasetMeta, labels: bool = False, titles: tuple[str, str] = ("ground truth", "prediction"),
                 scale: int = 1, with_legend: bool = False) -> np.ndarray:
    """Ground truth | prediction overlays (`annotate`: ``scale``, each with its legend when
    ``with_legend``) with a title bar over each. Returns (scale H (+ legend) + 14, 2 scale W + 4, 3) uint8."""
    panels = [annotate(image, ids, segs, meta, labels, scale, with_legend) for ids, segs in (gt, pred)]
    if panels[0].shape[0] != panels[1].shape[0]:  # legends of different heights
        tall = max(p.shape[0] for p in panels)
        panels = [np.pad(p, ((0, tall - p.shape[0]), (0, 0), (0, 0))) for p in panels]
    h, w = panels[0].shape[:2]
    canvas = Image.new("RGB", (2 * w + 4, h + 14), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (panel, title) in enumerate(zip(panels, titles)):
        canvas.paste(Image.fromarray(panel), (i * (w + 4), 14))
        draw.text((i * (w + 4) + 2, 1), title, fill=(255, 255, 255), font=ImageFont.load_default())
    return np.asarray(canvas)
