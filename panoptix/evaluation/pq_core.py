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

Oddities panopticapi accepts, evaluated as it evaluates them:
- a prediction segment with id 0 is an ordinary segment made of the PNG's 0 pixels;
- a ground-truth segment with id 0 is made of the PNG's 0 pixels, which stay VOID for every other
  rule (so its own union leaves out its intersection twice);
- ground-truth PNG ids without a JSON segment are neither VOID nor a segment; JSON segments
  missing from the ground-truth PNG are false negatives (JSON area); ground-truth segments of an
  unknown category count only towards that category, which no average includes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from panoptix.data.sample import map_ids
from panoptix.evaluation.findings import shown

#: ``(severity, side, text)``: side "gt" or "pred" names the file the problem is in.
CoreFinding = tuple[str, str, str]


@dataclass
class SegmentTable:
    """Segments of one image as arrays (n segments, ids unique).

    ``ids`` (n,) segment ids; ``cats`` (n,) category indices 0..C-1, or C for a category the
    dataset does not list (ground truth only); ``crowd`` (n,) bool; ``area`` (n,) float64 JSON areas
    (ground truth only; NaN where the JSON gives none and the PNG count is used).
    """

    ids: np.ndarray
    cats: np.ndarray
    crowd: np.ndarray
    area: np.ndarray

    @classmethod
    def build(cls, ids, cats, crowd=None, area=None) -> SegmentTable:
        n = len(ids)
        return cls(np.asarray(ids, dtype=np.int64).reshape(n), np.asarray(cats, dtype=np.int64).reshape(n),
                   np.zeros(n, bool) if crowd is None else np.asarray(crowd, dtype=bool).reshape(n),
                   np.zeros(n) if area is None else np.asarray(area, dtype=np.float64).reshape(n))


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
    """1..n for ``seg_ids`` (in order); 0 for a VOID value (0) that ``seg_ids`` does not list;
    n+1 for any other value."""
    n = len(seg_ids)
    out = map_ids(values, seg_ids, np.arange(1, n + 1), fill=n + 1)
    out[(out == n + 1) & (values == 0)] = 0
    return out


def _gt_keys(gt: SegmentTable) -> np.ndarray:
    """Ground-truth ids to look pixels up by: 0 always stays VOID (row 0), see `_gt_rows`."""
    return np.where(gt.ids == 0, -1, gt.ids)


def _gt_rows(gt: SegmentTable) -> np.ndarray:
    """Row of each ground-truth segment in the intersection matrix: the VOID row for id 0."""
    return np.where(gt.ids == 0, 0, np.arange(1, len(gt.ids) + 1))


# Per side: severity, what a PNG id without a JSON segment means, what a JSON segment without pixels means.
_MISMATCH = {
    "pred": ("error", "segment id(s) {} are in the prediction PNG but not in its JSON",
             "segment id(s) {} are in the prediction JSON but not in its PNG"),
    "gt": ("warning", "ground-truth PNG id(s) {} have no segment in the JSON; their pixels count as neither VOID "
                      "nor a segment (as in panopticapi)",
           "ground-truth segment(s) {} are in the JSON but not in the PNG; each is a false negative unless crowd "
           "(as in panopticapi)"),
}


def _side_checks(gt: SegmentTable, gt_counts: np.ndarray, gt_stray: np.ndarray,
                 pred: SegmentTable, pred_counts: np.ndarray, pred_stray: np.ndarray) -> list[CoreFinding]:
    """PNG against JSON for each side. ``*_counts`` (n,) pixels of each JSON segment in its PNG,
    ``*_stray`` PNG ids that no JSON segment lists (0 excluded)."""
    out: list[CoreFinding] = []
    for side, table, counts, stray in (("pred", pred, pred_counts, pred_stray), ("gt", gt, gt_counts, gt_stray)):
        severity, stray_text, absent_text = _MISMATCH[side]
        absent = table.ids[counts == 0]
        out += [(severity, side, text.format(shown(ids.tolist())))
                for text, ids in ((stray_text, stray), (absent_text, absent)) if len(ids)]
    wrong = np.flatnonzero((gt_counts > 0) & ~np.isnan(gt.area) & (gt.area != gt_counts))
    if len(wrong):
        listed = shown([f"{gt.ids[k]} (JSON {gt.area[k]:g}, PNG {gt_counts[k]})" for k in wrong], sep=", ")
        out.append(("warning", "gt", f"ground-truth segment area(s) differ from their pixel counts: {listed}; "
                                     "the JSON areas are used (as in panopticapi)"))
    return out


def _counts(values: np.ndarray, lengths: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel count per key slot (0 VOID, 1..n keys, n+1 other) and the stray values (slot n+1)."""
    idx = index_of(values, keys)
    counts = np.bincount(idx, weights=lengths, minlength=len(keys) + 2).astype(np.int64)
    stray = np.unique(values[idx == len(keys) + 1]) if counts[-1] else values[:0]
    return counts, stray


def image_pq_stats(gt_map: np.ndarray, gt: SegmentTable, pred_map: np.ndarray, pred: SegmentTable,
                   num_categories: int) -> tuple[np.ndarray | None, list[CoreFinding]]:
    """PQ statistics of one image, and what is wrong with it.

    Args:
        gt_map, pred_map: (H, W) integer segment-id maps (0 = VOID unless a segment lists id 0).
        gt, pred: their segments; category indices lie in 0..num_categories (num_categories for
            a ground-truth category the dataset does not list).
    Returns:
        (4, C) float64 sums of matched IoU, TP, FP, FN per category (None when an error was
        found), and the findings: errors for maps of different sizes, prediction PNG ids without
        a JSON segment and the reverse (panopticapi's checks); warnings for the ground-truth
        oddities panopticapi tolerates. All checks run whatever the others find.
    """
    if gt_map.shape != pred_map.shape:
        P, gt_rows = len(pred.ids), _gt_rows(gt)
        size = ("error", "pred", f"prediction is {pred_map.shape[1]}x{pred_map.shape[0]} (WxH), ground truth "
                                 f"{gt_map.shape[1]}x{gt_map.shape[0]}")
        g_counts, g_stray = _counts(*np.unique(gt_map, return_counts=True), _gt_keys(gt))
        p_counts, p_stray = _counts(*np.unique(pred_map, return_counts=True), pred.ids)
        return None, [size, *_side_checks(gt, g_counts[gt_rows], g_stray, pred, p_counts[1:P + 1], p_stray)]

    return pairs_pq_stats(*pair_runs(gt_map, pred_map), gt, pred, num_categories)


def pairs_pq_stats(run_gt: np.ndarray, run_pred: np.ndarray, run_len: np.ndarray, gt: SegmentTable,
                   pred: SegmentTable, num_categories: int) -> tuple[np.ndarray | None, list[CoreFinding]]:
    """`image_pq_stats` from (R,) (gt id, pred id) pixel pairs of two maps of the same size and
    their (R,) pixel counts. A pair may come more than once: the runs of `pair_runs`, or the
    distinct pairs that the compiled PNG path counts without decoding the maps."""
    G, P = len(gt.ids), len(pred.ids)
    gt_rows = _gt_rows(gt)
    gi, pi = index_of(run_gt, _gt_keys(gt)), index_of(run_pred, pred.ids)
    M = np.bincount(gi * (P + 2) + pi, weights=run_len, minlength=(G + 2) * (P + 2))
    M = M.astype(np.int64).reshape(G + 2, P + 2)
    gt_area_png, pred_area = M[gt_rows].sum(axis=1), M[:, 1:P + 1].sum(axis=0)
    g_stray = np.unique(run_gt[gi == G + 1]) if M[G + 1].any() else run_gt[:0]
    p_stray = np.unique(run_pred[pi == P + 1]) if M[:, P + 1].any() else run_pred[:0]
    findings = _side_checks(gt, gt_area_png, g_stray, pred, pred_area, p_stray)
    if any(f[0] == "error" for f in findings):
        return None, findings

    C = num_categories + 1                         # the last column collects unknown gt categories
    gt_area = np.where(np.isnan(gt.area), gt_area_png, gt.area)
    stats = np.zeros((4, C), dtype=np.float64)
    inter = M[gt_rows][:, 1:P + 1]
    void_pred = M[0, 1:P + 1]
    cand = (inter > 0) & (gt.cats[:, None] == pred.cats[None, :]) & ~gt.crowd[:, None]
    r, c = np.nonzero(cand)
    union = gt_area[r] + pred_area[c] - inter[r, c] - void_pred[c]
    with np.errstate(divide="ignore", invalid="ignore"):   # a gt id-0 segment can make union <= 0
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
    for k in np.flatnonzero(gt.crowd):            # few crowd segments; later ones win, as in panopticapi
        crowd_row[gt.cats[k]] = k
    ignored = void_pred.astype(np.float64)
    has_crowd = crowd_row[pred.cats] >= 0
    ignored[has_crowd] += inter[crowd_row[pred.cats[has_crowd]], np.flatnonzero(has_crowd)]
    fp = ~pred_matched & ~(ignored / np.maximum(pred_area, 1) > 0.5)
    stats[2] = np.bincount(pred.cats[fp], minlength=C)
    return stats[:, :num_categories], findings
