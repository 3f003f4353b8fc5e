"""The two-stage merges in fixed shapes, for an exported graph (``panoptix export``): the same segment
map, segment numbering and segment table as `heuristic_fusion` and `upsnet_fusion`, computed on the
detections padded to a fixed count D, with no data-dependent Python control flow, so that they trace.

Inputs are D rows, ``valid`` marking the real ones (a detector keeps a variable number up to D).
Outputs follow the CIAE graph's contract (`panoptix.engine.export`), with Q = D + S (S = the stuff
channels): ``ids`` (H, W) int32 segment ids, and per segment q + 1 its ``categories`` (Q,) int64,
``scores`` (Q,) float32 and ``areas`` (Q,) int64, area 0 where no such segment exists.

The heuristic's overlap rule is sequential in paste order (an instance's fate depends on which
earlier ones were pasted). Here it is unrolled over the D padded rows: step k tests row k against
the pixels taken so far and takes its free pixels when it passes. That is the rule itself, not an
approximation, and costs D steps of O(H W). UPSNet's duplicate removal is unrolled the same way
over the (D, D) IoU matrix.
"""

from __future__ import annotations

import torch

from panoptix.fusion.box_mask import box_mask

# What every panoptic graph returns (the CIAE graph too), in this order.
PANOPTIC_OUTPUTS = ("ids", "categories", "scores", "areas")


def pad_rows(x: torch.Tensor, rows: int, fill: float = 0.0) -> torch.Tensor:
    """The first ``rows`` rows of ``x`` padded with ``fill`` to exactly ``rows`` (traces: the pad is a
    constant block, the cut a constant slice)."""
    block = torch.full((rows, *x.shape[1:]), fill, dtype=x.dtype, device=x.device)
    return torch.cat([x, block])[:rows]


def _descending(key: torch.Tensor) -> torch.Tensor:
    """Indices sorting (D,) ``key`` high to low (TopK in ONNX, lower index first on ties)."""
    return torch.topk(key, key.shape[0], sorted=True).indices


def _segment_table(size: int, segment: torch.Tensor, values: torch.Tensor, fill: float) -> torch.Tensor:
    """A (size,) table with ``values[i]`` at ``segment[i] - 1`` (rows with segment 0 are dropped)."""
    table = torch.full((size + 1,), fill, dtype=values.dtype, device=values.device)
    return table.scatter(0, segment.long(), values)[1:]


def _outputs(ids: torch.Tensor, q: int, segment: torch.Tensor, categories: torch.Tensor, scores: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids, categories (Q,), scores (Q,), areas (Q,))`` from the segment of each candidate row
    (0 = none), its category and score."""
    flat = ids.flatten().long()
    areas = torch.zeros(q + 1, dtype=torch.int64, device=ids.device).scatter_add(0, flat, torch.ones_like(flat))[1:]
    return (ids, _segment_table(q, segment, categories.long(), 0.0), _segment_table(q, segment, scores.float(), 0.0),
            areas)


def _stuff_segments(ids: torch.Tensor, sem: torch.Tensor, table: torch.Tensor, first: torch.Tensor,
                    min_area: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`fill_stuff` in fixed shapes: the ids with free pixels given to stuff classes covering at least
    ``min_area`` of them, numbered from ``first`` + 1 in channel order, and each channel's segment (K,)."""
    k = table.shape[0]
    free = (ids == 0) & (table[sem] >= 0)
    counts = torch.zeros(k, dtype=torch.int64, device=ids.device).scatter_add(0, sem.flatten(), free.flatten().long())
    kept = (counts > 0) & (counts.float() >= min_area) & (table >= 0)
    segment = torch.where(kept, first + torch.cumsum(kept.long(), 0), torch.zeros_like(counts))
    stuff_ids = segment[sem]
    return torch.where(free & (stuff_ids > 0), stuff_ids.to(torch.int32), ids), segment


def heuristic_graph_merge(scores: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor,
                          semantic_logits: torch.Tensor, semantic_categories: torch.Tensor,
                          thing_categories: torch.Tensor, min_area: float, order: torch.Tensor | None = None,
                          score_thresh: float = 0.5, overlap_thresh: float = 0.5, mask_thresh: float = 0.5,
                          stuff_source: str = "argmax", **_: object
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`heuristic_fusion` (and the ranking merge, with ``order``) on D padded rows.

    Args:
        scores, labels, valid: (D,) detection scores, contiguous thing indices, real rows.
        masks: (D, H, W) pasted mask probabilities.
        semantic_logits: (K, H, W); semantic_categories: (K,) int64, -1 for thing channels.
        thing_categories: (T,) int64 category of each thing index.
        min_area: the stuff area limit in pixels (`panoptix.fusion.area.stuff_area_limit`).
        order: (D,) paste-order key (ranking scores); None orders by ``scores``.

    Returns:
        ``(ids (H, W) int32, categories (Q,), scores (Q,), areas (Q,))``, Q = D + K.
    """
    d = scores.shape[0]
    keep = valid & (scores >= score_thresh)
    key = torch.where(keep, scores if order is None else order, torch.full_like(scores, -1.0))
    rank = _descending(key)
    keep, binary = keep[rank], masks[rank] > mask_thresh
    area = binary.flatten(1).sum(1)
    taken = torch.zeros_like(binary[0])
    owner = torch.zeros(binary.shape[1:], dtype=torch.int64, device=masks.device)
    accepted = []
    for k in range(d):  # the sequential rule, unrolled over the D rows (module docstring)
        overlap = (binary[k] & taken).sum()
        ok = keep[k] & (area[k] > 0) & (overlap.float() <= overlap_thresh * area[k].float())
        new = binary[k] & ok & ~taken
        owner = torch.where(new, torch.full_like(owner, k), owner)
        taken = taken | new
        accepted.append(ok)
    accepted = torch.stack(accepted)
    segment = torch.where(accepted, torch.cumsum(accepted.long(), 0), torch.zeros_like(area))
    ids = torch.where(taken, segment[owner], torch.zeros_like(owner)).to(torch.int32)
    if stuff_source == "stuff_only":
        sem = semantic_logits.masked_fill((semantic_categories < 0)[:, None, None], float("-inf")).argmax(0)
    else:
        sem = semantic_logits.argmax(0)
    ids, stuff_segment = _stuff_segments(ids, sem, semantic_categories, accepted.long().sum(), min_area)
    categories = torch.cat([thing_categories[labels[rank]], semantic_categories])
    seg_scores = torch.cat([scores[rank], torch.ones_like(semantic_categories, dtype=torch.float32)])
    return _outputs(ids, d + semantic_categories.shape[0], torch.cat([segment, stuff_segment]), categories,
                    seg_scores)


def _unique_rows(binary: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor, iou_thresh: float,
                 class_agnostic: bool) -> torch.Tensor:
    """`panoptix.fusion.upsnet.remove_duplicates` over the ``keep`` rows of score-ordered (D, H, W)
    masks, unrolled: row i goes when its IoU with a kept earlier row exceeds ``iou_thresh``."""
    flat = binary.flatten(1).float()
    inter = flat @ flat.T
    area = flat.sum(1)
    iou = inter / (area[:, None] + area[None] - inter).clamp(min=1)
    dup = iou > iou_thresh
    if not class_agnostic:
        dup = dup & (labels[:, None] == labels[None])
    unique = []
    for i in range(binary.shape[0]):
        earlier = torch.stack(unique) if unique else keep.new_zeros(0)
        gone = (dup[i, :i] & earlier).any() if i else keep.new_zeros(())
        unique.append(keep[i] & ~gone)
    return torch.stack(unique)


def upsnet_graph_merge(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor,
                       valid: torch.Tensor, semantic_logits: torch.Tensor, semantic_categories: torch.Tensor,
                       thing_categories: torch.Tensor, min_area: float, score_thresh: float = 0.5,
                       duplicate_iou: float = 0.5, class_agnostic: bool = True, mask_thresh: float = 0.5,
                       **_: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`upsnet_fusion` on D padded rows (``boxes`` (D, 4) at the image size; the rest as in
    `heuristic_graph_merge`). Rows that are padding, under ``score_thresh`` or duplicates get
    -inf channels and stay out of the unknown channel's max, as if absent."""
    d = scores.shape[0]
    keep = valid & (scores >= score_thresh)
    rank = _descending(torch.where(keep, scores, torch.full_like(scores, -1.0)))
    keep, boxes, labels, scores = keep[rank], boxes[rank], labels[rank], scores[rank]
    p = masks[rank].float().clamp(1e-7, 1 - 1e-7)
    logits = (torch.log(p) - torch.log1p(-p)).clamp(-16.0, 16.0)
    unique = _unique_rows(logits > float(torch.logit(torch.tensor(mask_thresh))), labels, keep, duplicate_iou,
                          class_agnostic)
    stuff = (semantic_categories >= 0).nonzero()[:, 0]
    things = (semantic_categories < 0).nonzero()[:, 0]
    sem = semantic_logits.float()
    inside = box_mask(boxes, tuple(sem.shape[-2:])) & unique[:, None, None]
    zero, absent = sem.new_zeros(()), sem.new_tensor(-float("inf"))
    sem_term = torch.where(inside, sem[things[labels]], zero)
    inst = torch.where(unique[:, None, None], sem_term + torch.where(inside, logits, zero), absent)
    inst_max = torch.where(unique[:, None, None], sem_term, absent).amax(0)
    inst_max = torch.where(unique.any(), inst_max, zero)
    unknown = sem[things].amax(0) - inst_max
    winner = torch.cat([sem[stuff], inst, unknown[None]]).argmax(0)
    n_stuff = stuff.shape[0]
    counts = torch.zeros(n_stuff + d + 1, dtype=torch.int64, device=sem.device).scatter_add(
        0, winner.flatten(), torch.ones_like(winner.flatten()))
    inst_kept = counts[n_stuff:n_stuff + d] > 0
    n_things = inst_kept.long().sum()
    stuff_kept = (counts[:n_stuff] > 0) & (counts[:n_stuff].float() >= min_area)
    inst_segment = torch.where(inst_kept, torch.cumsum(inst_kept.long(), 0), torch.zeros_like(counts[:d]))
    stuff_segment = torch.where(stuff_kept, n_things + torch.cumsum(stuff_kept.long(), 0),
                                torch.zeros_like(counts[:n_stuff]))
    channel_segment = torch.cat([stuff_segment, inst_segment, counts.new_zeros(1)])
    ids = channel_segment[winner].to(torch.int32)
    categories = torch.cat([thing_categories[labels], semantic_categories[stuff]])
    seg_scores = torch.cat([scores.float(), sem.new_ones(n_stuff)])
    return _outputs(ids, d + n_stuff, torch.cat([inst_segment, stuff_segment]), categories, seg_scores)


__all__ = ["heuristic_graph_merge", "upsnet_graph_merge", "pad_rows", "PANOPTIC_OUTPUTS"]
