"""Training-time transforms of a `PanopticSample`: short-side resize (multi-scale jitter) and flips.

Every random choice comes from the ``rng`` passed in, never from global state, so the training
stream can be replayed exactly on resume (see `panoptix.engine.sampler`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from PIL import Image

from panoptix.data.sample import PanopticSample, bbox_of_mask


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


class TrainTransform:
    """Multi-scale short-side jitter then a random horizontal flip.

    Args:
        min_sizes: short-side sizes to pick from uniformly (detectron2's ``MIN_SIZE_TRAIN``).
        max_size: cap on the long side.
        flip: probability of a horizontal flip.
    """

    def __init__(self, min_sizes: Sequence[int] = (640, 672, 704, 736, 768, 800), max_size: int = 1333,
                 flip: float = 0.5) -> None:
        if not min_sizes:
            raise ValueError("min_sizes must name at least one short-side size")
        self.min_sizes = [int(s) for s in min_sizes]
        self.max_size = int(max_size)
        self.flip = float(flip)

    def __call__(self, sample: PanopticSample, rng: np.random.Generator) -> PanopticSample:
        short = self.min_sizes[int(rng.integers(len(self.min_sizes)))]
        sample = resize(sample, *resized_shape(*sample.ids.shape, short, self.max_size))
        if rng.random() < self.flip:
            sample = hflip(sample)
        return sample
