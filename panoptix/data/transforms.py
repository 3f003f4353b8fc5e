"""Training-time transforms of a `PanopticSample`: Mosaic, short-side resize (multi-scale jitter with
an optional random ratio), random crop and flips.

Every random choice comes from the ``rng`` passed in, never from global state, so the training
stream can be replayed exactly on resume (see `panoptix.engine.sampler`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from panoptix.data.sample import PanopticSample, bbox_of_mask, map_ids

MOSAIC_TILES = ("top_left", "top_right", "bottom_left", "bottom_right")


def resized_shape(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """(h, w) scaled so the short side is ``short`` and the long side at most ``max_size``."""
    scale = min(short / min(h, w), max_size / max(h, w))
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def _with_ids(sample: PanopticSample, ids: np.ndarray, image: np.ndarray | None) -> PanopticSample:
    """A copy of ``sample`` with a new id map; segments that vanished are dropped, areas and boxes remeasured."""
    uniq, counts = np.unique(ids, return_counts=True)
    area = dict(zip(uniq.tolist(), counts.tolist()))
    segments = [dataclasses.replace(s, area=area[s.id], bbox=bbox_of_mask(ids == s.id))
                for s in sample.segments if s.id in area]
    return dataclasses.replace(sample, ids=ids, image=image, segments=segments)


def resize(sample: PanopticSample, h: int, w: int) -> PanopticSample:
    """Image bilinear (antialiased), id map nearest, to (h, w)."""
    if (h, w) == sample.ids.shape:
        return sample
    H, W = sample.ids.shape
    rows = np.minimum(((np.arange(h) + 0.5) * H / h).astype(np.int64), H - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * W / w).astype(np.int64), W - 1)
    ids = sample.ids[rows[:, None], cols[None, :]]
    image = None
    if sample.image is not None:
        image = np.asarray(Image.fromarray(sample.image).resize((w, h), Image.BILINEAR))
    return _with_ids(sample, ids, image)


def hflip(sample: PanopticSample) -> PanopticSample:
    image = None if sample.image is None else np.ascontiguousarray(sample.image[:, ::-1])
    return _with_ids(sample, np.ascontiguousarray(sample.ids[:, ::-1]), image)


def crop(sample: PanopticSample, top: int, left: int, h: int, w: int) -> PanopticSample:
    """The (h, w) window at (top, left); segments that leave it are dropped."""
    image = None if sample.image is None else np.ascontiguousarray(sample.image[top:top + h, left:left + w])
    return _with_ids(sample, np.ascontiguousarray(sample.ids[top:top + h, left:left + w]), image)


def mosaic_placement(tile: str, center: tuple[int, int], tile_size: tuple[int, int], canvas: tuple[int, int]
                     ) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """Where one resized image goes on the mosaic canvas (mmseg ``RandomMosaic``): the four images meet
    at ``center`` = (cx, cy); what falls outside the canvas is cropped away.

    Returns (x1, y1, x2, y2) on the canvas and the same-size (x1, y1, x2, y2) window of the image.
    """
    (cx, cy), (th, tw), (ch, cw) = center, tile_size, canvas
    if tile == "top_left":
        box = (max(cx - tw, 0), max(cy - th, 0), cx, cy)
        return box, (tw - (box[2] - box[0]), th - (box[3] - box[1]), tw, th)
    if tile == "top_right":
        box = (cx, max(cy - th, 0), min(cx + tw, cw), cy)
        return box, (0, th - (box[3] - box[1]), box[2] - box[0], th)
    if tile == "bottom_left":
        box = (max(cx - tw, 0), cy, cx, min(cy + th, ch))
        return box, (tw - (box[2] - box[0]), 0, tw, box[3] - box[1])
    if tile == "bottom_right":
        box = (cx, cy, min(cx + tw, cw), min(cy + th, ch))
        return box, (0, 0, box[2] - box[0], box[3] - box[1])
    raise ValueError(f"unknown mosaic tile {tile!r}; expected one of {MOSAIC_TILES}")


def mosaic(samples: Sequence[PanopticSample], size: tuple[int, int], center: tuple[int, int],
           pad_value: int = 0) -> PanopticSample:
    """Four samples on a (2h, 2w) canvas, meeting at ``center`` (Mosaic; spec section 8).

    Each sample is resized keeping its aspect ratio by min(h / H_i, w / W_i) (image bilinear, ids
    nearest) and pasted into its quadrant (top-left, top-right, bottom-left, bottom-right). Pixels no
    image covers are VOID (id 0: the ignore label 255 in every target) and ``pad_value`` in the image.
    Segment ids are renumbered 1..n across the four tiles, so instances stay unique; segments cut away
    entirely are dropped and the others remeasured. The result keeps the first sample's image id.
    """
    if len(samples) != 4:
        raise ValueError(f"mosaic needs 4 samples, got {len(samples)}")
    h, w = size
    canvas = (2 * h, 2 * w)
    ids = np.zeros(canvas, dtype=np.int32)
    image = np.full((*canvas, 3), pad_value, dtype=np.uint8)
    segments, next_id = [], 1
    for tile, sample in zip(MOSAIC_TILES, samples):
        if sample.image is None:
            raise ValueError(f"image {sample.image_id!r} has no RGB image to put in a mosaic")
        scale = min(h / sample.height, w / sample.width)
        sample = resize(sample, max(1, round(sample.height * scale)), max(1, round(sample.width * scale)))
        old = np.array([seg.id for seg in sample.segments], dtype=np.int64)
        new = np.arange(next_id, next_id + len(old), dtype=np.int64)
        next_id += len(old)
        (x1, y1, x2, y2), (u1, v1, u2, v2) = mosaic_placement(tile, center, (sample.height, sample.width), canvas)
        ids[y1:y2, x1:x2] = map_ids(sample.ids[v1:v2, u1:u2], old, new, 0)
        image[y1:y2, x1:x2] = sample.image[v1:v2, u1:u2]
        segments += [dataclasses.replace(seg, id=int(n)) for seg, n in zip(sample.segments, new)]
    return _with_ids(dataclasses.replace(samples[0], segments=segments), ids, image)


class TrainTransform:
    """Mosaic (with a probability), multi-scale short-side jitter (times a random ratio), a random crop,
    then a random horizontal flip.

    Args:
        min_sizes: short-side sizes to pick from uniformly (detectron2's ``MIN_SIZE_TRAIN``; AinnoSeg's
            base scales 520/640/800).
        max_size: cap on the long side (scaled by the ratio too).
        flip: probability of a horizontal flip.
        scale_range: (lo, hi): the chosen short side is multiplied by a ratio drawn uniformly from it
            (mmseg's ``ratio_range``, 0.5-2.0 for ADE20K); (1, 1) turns it off.
        crop_size: (h, w) random crop after the resize (a side shorter than the crop is kept whole);
            None for none.
        mosaic: probability of building the sample as a mosaic of it and three other images.
        mosaic_size: (h, w) of each mosaic quadrant (the canvas is twice that); None: the sample's own size.
    """

    def __init__(self, min_sizes: Sequence[int] = (640, 672, 704, 736, 768, 800), max_size: int = 1333,
                 flip: float = 0.5, scale_range: Sequence[float] = (1.0, 1.0),
                 crop_size: Sequence[int] | None = None, mosaic: float = 0.0,
                 mosaic_size: Sequence[int] | None = None) -> None:
        if not min_sizes:
            raise ValueError("min_sizes must name at least one short-side size")
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be (lo, hi) with 0 < lo <= hi, got {tuple(scale_range)}")
        if crop_size is not None and (len(crop_size) != 2 or min(crop_size) < 1):
            raise ValueError(f"crop_size must be (h, w) of positive sizes, got {tuple(crop_size)}")
        if not 0.0 <= mosaic <= 1.0:
            raise ValueError(f"mosaic is a probability in 0..1, got {mosaic}")
        self.min_sizes = [int(s) for s in min_sizes]
        self.max_size = int(max_size)
        self.flip = float(flip)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.crop_size = None if crop_size is None else (int(crop_size[0]), int(crop_size[1]))
        self.mosaic = float(mosaic)
        self.mosaic_size = None if mosaic_size is None else (int(mosaic_size[0]), int(mosaic_size[1]))

    def __call__(self, sample: PanopticSample, rng: np.random.Generator,
                 pick: Callable[[np.random.Generator], PanopticSample] | None = None) -> PanopticSample:
        """``pick(rng)`` draws another training sample (for Mosaic)."""
        if self.mosaic and rng.random() < self.mosaic:
            if pick is None:
                raise ValueError("mosaic needs a way to draw three more training samples (pick)")
            h, w = self.mosaic_size or sample.ids.shape
            center = (int(rng.uniform(0.5, 1.5) * w), int(rng.uniform(0.5, 1.5) * h))
            sample = mosaic([sample] + [pick(rng) for _ in range(3)], (h, w), center)
        ratio = rng.uniform(*self.scale_range) if self.scale_range != (1.0, 1.0) else 1.0
        short = self.min_sizes[int(rng.integers(len(self.min_sizes)))] * ratio
        sample = resize(sample, *resized_shape(*sample.ids.shape, short, self.max_size * ratio))
        if self.crop_size is not None:
            ch, cw = min(self.crop_size[0], sample.height), min(self.crop_size[1], sample.width)
            top = int(rng.integers(sample.height - ch + 1))
            left = int(rng.integers(sample.width - cw + 1))
            sample = crop(sample, top, left, ch, cw)
        if rng.random() < self.flip:
            sample = hflip(sample)
        return sample
