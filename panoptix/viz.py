"""Drawing panoptic maps: coloured overlays with boundaries and labels, and GT | prediction pairs.

Stuff is drawn in its category colour, each thing instance in a distinct shade of its category
colour (the k-th instance of a category in an image gets the k-th shade), segment boundaries as
thin white lines.
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


def overlay(image: np.ndarray | None, ids: np.ndarray, segments: Iterable[Any], meta: DatasetMeta,
            alpha: float = 0.55, draw_boundaries: bool = True, labels: bool = False) -> np.ndarray:
    """Blend the coloured map over ``image`` (H, W, 3 uint8; grey when None). Returns (H, W, 3) uint8."""
    segments = list(segments)
    ids = np.asarray(ids)
    colors = colorize(ids, segments, meta).astype(np.float32)
    base = np.full(colors.shape, 128, np.float32) if image is None else np.asarray(image, np.float32)
    if base.shape != colors.shape:
        raise ValueError(f"image is {base.shape[1]}x{base.shape[0]} but the map is {ids.shape[1]}x{ids.shape[0]}")
    out = np.where((ids != 0)[..., None], (1 - alpha) * base + alpha * colors, base)
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


def side_by_side(image: np.ndarray | None, gt: tuple[np.ndarray, Iterable[Any]], pred: tuple[np.ndarray, Iterable[Any]],
                 meta: DatasetMeta, labels: bool = False, titles: tuple[str, str] = ("ground truth", "prediction")
                 ) -> np.ndarray:
    """Ground truth | prediction overlays with a title bar over each. Returns (H + 14, 2W + 4, 3) uint8."""
    panels = [overlay(image, ids, segs, meta, labels=labels) for ids, segs in (gt, pred)]
    h, w = panels[0].shape[:2]
    canvas = Image.new("RGB", (2 * w + 4, h + 14), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (panel, title) in enumerate(zip(panels, titles)):
        canvas.paste(Image.fromarray(panel), (i * (w + 4), 14))
        draw.text((i * (w + 4) + 2, 1), title, fill=(255, 255, 255), font=ImageFont.load_default())
    return np.asarray(canvas)
