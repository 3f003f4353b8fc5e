"""The heuristic merge of Panoptic FPN (Kirillov et al., 2019), vectorised on the device.

Instances are pasted in descending score order, dropping those under ``score_thresh`` and those
with more than ``overlap_thresh`` of their mask already taken; the pixels they leave free are
then given to stuff classes from the semantic argmax whose free area is at least
``stuff_min_area`` pixels at the original image size (detectron2: 4096; OANet: 4900), or
``stuff_min_area_fraction`` of the image area when that is set (for tiny images).

Where the semantic argmax is a thing class, detectron2 leaves the free pixel VOID
(``stuff_source="argmax"``). OANet "only extract[s] the stuff predictions" at inference (OANet, Liu et al. 2019,
section 3.1): ``stuff_source="stuff_only"`` takes the argmax over the stuff channels only, so
every free pixel gets a stuff class.

The sequential "already taken" rule runs in paste order, each instance on the rows and columns its
mask covers (`_accept`), so the merge costs the instances' extents, not N full images, and makes no
copy of the masks (at 512x683 with 100 instances that is what makes it fast). An exported graph runs
the same rule unrolled over a fixed number of rows (`panoptix.fusion.graph_merge`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from panoptix.data.meta import DatasetMeta
from panoptix.fusion.area import stuff_area_limit
from panoptix.fusion.graph_merge import heuristic_graph_merge, stuff_argmax, stuff_segments
from panoptix.fusion.needs import declare
from panoptix.registry import FUSIONS
from panoptix.structures import Instances, PanopticResult, SegmentInfo


def semantic_category_table(meta: DatasetMeta, variant: str) -> list[int]:
    """Category id of each semantic index that names a stuff class, -1 for thing indices.

    ``"stuff_things"``: index 0 is the single things class, 1..S the stuff classes.
    ``"all"``: index k is the k-th category; thing categories give -1.
    """
    if variant == "stuff_things":
        return [-1] + list(meta.stuff_ids)
    if variant == "all":
        return [-1 if meta.isthing(c) else c for c in meta.category_ids]
    raise ValueError(f"unknown semantic variant {variant!r}; expected 'stuff_things' or 'all'")


def accept_instances(masks: torch.Tensor, overlap_thresh: float = 0.5) -> torch.Tensor:
    """Which score-ordered instances survive the "already taken" rule.

    Args:
        masks: (N, H, W) bool masks, highest score first.
        overlap_thresh: an instance is skipped when more than this fraction of its mask is covered
            by accepted instances ranked before it (or when its mask is empty).

    Returns:
        (N,) bool.
    """
    return _accept(masks, torch.arange(masks.shape[0], device=masks.device), None, overlap_thresh)[0]


def _accept(masks: torch.Tensor, order: torch.Tensor, mask_thresh: float | None, overlap_thresh: float
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The "already taken" rule over the instances ``order`` (M,) indexes in ``masks`` (N, H, W), in
    that order: bool masks, or probabilities / logits binarised above ``mask_thresh``.

    Returns (accepted (M,) bool; each pixel's owner (H, W) int64, the first accepted position in
    ``order`` covering it; whether any accepted instance covers it (H, W) bool).

    The rule runs in paste order, as the paper states it, each step on the instance's extent (the
    rows and columns where its mask is on), so the cost is the instances' summed extents, not M full
    images, and no binary copy of the (N, H, W) masks is made. The extents come to the host in one
    transfer; each step is a few tensor operations on its crop with no further synchronisation.
    """
    h, w = masks.shape[-2:]
    m = order.shape[0]
    taken = torch.zeros((h, w), dtype=torch.bool, device=masks.device)
    owner = torch.zeros((h, w), dtype=torch.int64, device=masks.device)
    accepted = torch.zeros(m, dtype=torch.bool, device=masks.device)
    if m == 0:
        return accepted, owner, taken
    if mask_thresh is None:
        rows, cols = masks.any(2)[order], masks.any(1)[order]
    else:
        rows, cols = masks.amax(2)[order] > mask_thresh, masks.amax(1)[order] > mask_thresh
    plan = torch.stack([order, rows.any(1).long(), _first(rows), h - _first(rows.flip(1)), _first(cols),
                        w - _first(cols.flip(1))], 1).tolist()
    for p, (k, on, y0, y1, x0, x1) in enumerate(plan):
        if not on:   # an empty mask is never pasted
            continue
        crop = masks[k, y0:y1, x0:x1]
        mask = crop if mask_thresh is None else crop > mask_thresh
        held = taken[y0:y1, x0:x1]
        ok = (mask & held).sum() <= overlap_thresh * mask.sum()
        new = mask & ~held & ok
        owner[y0:y1, x0:x1].masked_fill_(new, p)
        held |= new
        accepted[p] = ok
    return accepted, owner, taken


def _first(flags: torch.Tensor) -> torch.Tensor:
    """(N, L) bool -> (N,) index of the first True in each row (0 for a row with none)."""
    return flags.to(torch.uint8).argmax(1)


@FUSIONS.register("heuristic")
@declare(graph=heuristic_graph_merge)
def heuristic_fusion(instances: Instances | None, semantic_logits: torch.Tensor,
                     semantic_categories: Sequence[int], thing_categories: Sequence[int],
                     score_thresh: float = 0.5, overlap_thresh: float = 0.5, stuff_min_area: int = 4096,
                     stuff_min_area_fraction: float | None = None,
                     stuff_source: Literal["argmax", "stuff_only"] = "argmax",
                     mask_thresh: float = 0.5, order_by: str | None = None) -> PanopticResult:
    """Merge instances and semantic logits of one image into a panoptic segmentation.

    Args:
        instances: N instances with ``masks`` (N, H, W) probabilities (or logits when
            ``instances.mask_logits``) at the image size; ``labels`` are contiguous thing indices.
        semantic_logits: (K, H, W) at the image size.
        semantic_categories: (K,) category id per semantic index, -1 where it is not stuff
            (see `semantic_category_table`).
        thing_categories: category id of each contiguous thing index.
        score_thresh, overlap_thresh, mask_thresh: the paper's 0.5 each.
        stuff_min_area: minimum stuff area in pixels of the (original-size) image.
        stuff_min_area_fraction: when set, the minimum is this fraction of H*W instead.
        stuff_source: ``"argmax"`` (free pixels whose argmax is a thing class stay VOID) or
            ``"stuff_only"`` (argmax over the stuff channels only).
        order_by: None pastes in detection-score order; the name of a per-instance field of
            ``instances.extra`` (e.g. ``"rank_scores"``) pastes in descending order of that field
            instead (the score threshold still applies to the detection score).

    Returns:
        `PanopticResult` with ids (H, W) int32 (things first, in score order, then stuff).
    """
    h, w = semantic_logits.shape[-2:]
    ids = torch.zeros((h, w), dtype=torch.int32, device=semantic_logits.device)
    segments = paste_things(ids, instances, thing_categories, score_thresh, overlap_thresh, mask_thresh, order_by)
    min_area = stuff_area_limit((h, w), stuff_min_area, stuff_min_area_fraction)
    ids = fill_stuff(ids, segments, semantic_logits, semantic_categories, min_area, stuff_source)
    return PanopticResult(ids=ids, segments=segments, semantic_logits=semantic_logits, instances=instances)


def paste_things(ids: torch.Tensor, instances: Instances | None, thing_categories: Sequence[int],
                 score_thresh: float, overlap_thresh: float, mask_thresh: float, order_by: str | None
                 ) -> list[SegmentInfo]:
    """Paste the instances at or above ``score_thresh`` into the empty (H, W) int32 ``ids`` in place, in
    descending order (score, or ``instances.extra[order_by]``) under the "already taken" rule; returns
    their segments (ids 1..A)."""
    if instances is None or not len(instances):
        return []
    keep = instances.scores >= score_thresh
    if order_by is not None and order_by not in instances.extra:
        raise ValueError(f"instances carry no {order_by!r} to order by (fields: {sorted(instances.extra)}); "
                         f"the ranking merge needs a system with a ranking head")
    rank = instances.scores if order_by is None else instances.extra[order_by]
    order = keep.nonzero()[:, 0][rank[keep].argsort(descending=True, stable=True)]
    probs = instances.masks[:, 0] if instances.masks.dim() == 4 else instances.masks
    if probs.shape[-2:] != ids.shape:
        raise ValueError(f"instance masks are {tuple(probs.shape[-2:])}, semantic logits {tuple(ids.shape)}")
    accepted, first, covered = _accept(probs, order, 0.0 if instances.mask_logits else mask_thresh, overlap_thresh)
    if not accepted.any():
        return []
    scores, labels = instances.scores[order][accepted], instances.labels[order][accepted]
    segment_of = torch.cumsum(accepted, 0).to(torch.int32)  # instance index -> segment id 1..A
    ids.copy_(torch.where(covered, segment_of[first], ids))
    areas = torch.bincount(ids.flatten().long(), minlength=len(scores) + 1)[1:].tolist()
    cats = torch.as_tensor(thing_categories, device=ids.device)[labels].tolist()
    return [SegmentInfo(i + 1, int(c), True, float(s), int(a))
            for i, (c, s, a) in enumerate(zip(cats, scores.tolist(), areas))]


def fill_stuff(ids: torch.Tensor, segments: list[SegmentInfo], semantic_logits: torch.Tensor,
               semantic_categories: Sequence[int], min_area: float,
               stuff_source: Literal["argmax", "stuff_only"] = "argmax") -> torch.Tensor:
    """``ids`` with its free pixels (0) given to the stuff classes of the semantic argmax that cover at
    least ``min_area`` free pixels; their segments are appended to ``segments``. Returns the new ids."""
    table = torch.as_tensor(semantic_categories, device=semantic_logits.device)
    if table.numel() != semantic_logits.shape[0]:
        raise ValueError(f"{semantic_logits.shape[0]} semantic channels but {table.numel()} category entries")
    sem = stuff_argmax(semantic_logits, table, stuff_source)
    ids, segment, counts = stuff_segments(ids, sem, table, len(segments), min_area)
    kept = segment > 0
    for k, area in zip(kept.nonzero()[:, 0].tolist(), counts[kept].tolist()):
        segments.append(SegmentInfo(len(segments) + 1, int(table[k]), False, 1.0, int(area)))
    return ids
