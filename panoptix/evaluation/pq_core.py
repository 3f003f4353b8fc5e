"""Panoptic Quality of one image, exactly as COCO's panopticapi ``pq_compute`` defines it.

The whole image is reduced to one small (gt segments x pred segments) intersection matrix: one
vectorised pass run-length encodes the (gt id, pred id) pixel pairs, and a `np.bincount` over
the runs sums their lengths. Matching, crowd and VOID handling then work on that matrix. No
Python loop touches pixels.

COCO rules implemented (panopticapi, evaluation.py):
- a (gt, pred) pair of the same category, gt not crowd, matches when IoU > 0.5, where the union
  leaves out the prediction's pixels on VOID; gt areas are the JSON ``area`` fields, prediction
  areas are counted from the PNG;
- unmatched non-crowd gt segments are false negatives; crowd segments are ignored;
- an unmatched prediction is ignored when more than half of it lies on VOID plus the crowd
  segment of its category (the last crowd segment listed for that category), otherwise it is a
  false positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from panoptix.data.errors import PanopticFormatError
from panoptix.data.sample import map_ids


@dataclass
class SegmentTable:
    """Segments of one image as arrays (n segments).

    ``ids`` (n,) segment ids; ``cats`` (n,) category indices 0..C-1; ``crowd`` (n,) bool;
    ``area`` (n,) int64 areas (used for ground truth only).
    """

    ids: np.ndarray
    cats: np.ndarray
    crowd: np.ndarray
    area: np.ndarray

    @classmethod
    def build(cls, ids, cats, crowd=None, area=None) -> "SegmentTable":
        n = len(ids)
        return cls(np.asarray(ids, dtype=np.int64), np.asarray(cats, dtype=np.int64),
                   np.zeros(n, bool) if crowd is None else np.asarray(crowd, dtype=bool),
                   np.zeros(n, np.int64) if area is None else np.asarray(area, dtype=np.int64))


def pair_runs(gt_map: np.ndarray, pred_map: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run-length encode the pixel sequence of (gt id, pred id) pairs in raster order.

    Returns (R,) gt ids, (R,) pred ids and (R,) run lengths. Panoptic maps are piecewise constant,
    so R is a few thousand where the image has hundreds of thousands of pixels, and everything
    after this one pass works on runs.
    """
    g, p = gt_map.reshape(-1), pred_map.reshape(-1)
    n = g.size
    change = np.empty(n, dtype=bool)
    change[:1] = True
    np.not_equal(g[1:], g[:-1], out=change[1:])
    change[1:] |= p[1:] != p[:-1]
    starts = np.flatnonzero(change)
    lengths = np.diff(starts, append=n)
    return g[starts], p[starts], lengths


def index_of(values: np.ndarray, seg_ids: np.ndarray) -> np.ndarray:
    """0 for VOID, 1..n for ``seg_ids`` (in order), n+1 for any other value."""
    n = len(seg_ids)
    out = map_ids(values, seg_ids, np.arange(1, n + 1), fill=n + 1)
    out[values == 0] = 0
    return out


def image_pq_stats(gt_map: np.ndarray, gt: SegmentTable, pred_map: np.ndarray, pred: SegmentTable,
                   num_categories: int, where: str = "") -> np.ndarray:
    """PQ statistics of one image.

    Args:
        gt_map, pred_map: (H, W) integer segment-id maps (0 = VOID), ids < 2^24.
        gt, pred: their segments; category indices must lie in 0..num_categories-1.
    Returns:
        (4, C) float64: rows are summed IoU of matches, TP, FP, FN per category.
    Raises:
        PanopticFormatError: prediction ids in the PNG without a JSON segment or the reverse,
        or maps of different sizes (panopticapi's checks, with the image named).
    """
    if gt_map.shape != pred_map.shape:
        raise PanopticFormatError(f"{where}: prediction is {pred_map.shape[1]}x{pred_map.shape[0]} (WxH), "
                                  f"ground truth {gt_map.shape[1]}x{gt_map.shape[0]}")
    G, P = len(gt.ids), len(pred.ids)
    run_gt, run_pred, run_len = pair_runs(gt_map, pred_map)
    gi, pi = index_of(run_gt, gt.ids), index_of(run_pred, pred.ids)
    M = np.bincount(gi * (P + 2) + pi, weights=run_len, minlength=(G + 2) * (P + 2))
    M = M.astype(np.int64).reshape(G + 2, P + 2)

    if M[:, P + 1].any():
        stray = np.unique(run_pred[pi == P + 1])
        raise PanopticFormatError(f"{where}: segment id(s) {stray[:10].tolist()} are in the prediction PNG "
                                  "but not in its JSON")
    pred_area = M[:, 1:P + 1].sum(axis=0)
    if P and (pred_area == 0).any():
        raise PanopticFormatError(f"{where}: segment id(s) {pred.ids[pred_area == 0][:10].tolist()} are in the "
                                  "prediction JSON but not in its PNG")

    C = num_categories
    stats = np.zeros((4, C), dtype=np.float64)
    inter = M[1:G + 1, 1:P + 1]
    void_pred = M[0, 1:P + 1]
    cand = (inter > 0) & (gt.cats[:, None] == pred.cats[None, :]) & ~gt.crowd[:, None]
    r, c = np.nonzero(cand)
    union = gt.area[r] + pred_area[c] - inter[r, c] - void_pred[c]
    iou = inter[r, c] / union
    ok = iou > 0.5
    r, c, iou = r[ok], c[ok], iou[ok]
    stats[0] = np.bincount(gt.cats[r], weights=iou, minlength=C)
    stats[1] = np.bincount(gt.cats[r], minlength=C)

    gt_matched = np.zeros(G, bool)
    gt_matched[r] = True
    pred_matched = np.zeros(P, bool)
    pred_matched[c] = True
    stats[3] = np.bincount(gt.cats[~gt_matched & ~gt.crowd], minlength=C)

    # Prediction pixels that count as "ignored": VOID plus the crowd region of its own category.
    crowd_row = np.full(C, -1, dtype=np.int64)
    for k in np.flatnonzero(gt.crowd):          # few crowd segments; later ones win, as in panopticapi
        crowd_row[gt.cats[k]] = k
    ignored = void_pred.astype(np.float64)
    has_crowd = crowd_row[pred.cats] >= 0
    ignored[has_crowd] += inter[crowd_row[pred.cats[has_crowd]], np.flatnonzero(has_crowd)]
    fp = ~pred_matched & ~(ignored / np.maximum(pred_area, 1) > 0.5)
    stats[2] = np.bincount(pred.cats[fp], minlength=C)
    return stats
