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
approximation, and costs D steps of O(H W) (the PyTorch merge runs it on each instance's extent).
UPSNet's duplicate removal runs row by row over the (D, D) IoU matrix.

The steps both forms share live here, once: the stuff step, UPSNet's duplicate removal, its channel
numbering, the inverted sigmoid, the semantic argmax.
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


def semantic_argmax(logits: torch.Tensor) -> torch.Tensor:
    """(K, H, W) -> (H, W) int64 index of the first maximum (``max(0).indices``: the same answer as
    ``argmax(0)``, about twice as fast on the CPU)."""
    return logits.max(0).indices


def stuff_argmax(logits: torch.Tensor, table: torch.Tensor, stuff_source: str = "argmax") -> torch.Tensor:
    """The semantic class the heuristic fills free pixels from: the argmax over all channels
    (``"argmax"``), or over the stuff channels only (``"stuff_only"``, OANet); ``table`` (K,) is -1 on
    thing channels."""
    if stuff_source == "stuff_only":
        return semantic_argmax(logits.masked_fill((table < 0)[:, None, None], float("-inf")))
    if stuff_source == "argmax":
        return semantic_argmax(logits)
    raise ValueError(f"stuff_source must be 'argmax' or 'stuff_only', got {stuff_source!r}")


def stuff_segments(ids: torch.Tensor, sem: torch.Tensor, table: torch.Tensor, first: torch.Tensor | int,
                   min_area: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The heuristic's stuff step: the free pixels (id 0) of each stuff class of ``sem`` (H, W) go to
    it when it covers at least ``min_area`` of them, as segments numbered from ``first`` + 1 in
    channel order. Returns (the new ids, each channel's segment (K,) (0: none), its free pixels (K,))."""
    free = (ids == 0) & (table[sem] >= 0)
    counts = torch.zeros(table.shape[0], dtype=torch.int64, device=ids.device).scatter_add(
        0, sem.flatten(), free.flatten().long())
    kept = (counts > 0) & (counts.float() >= min_area) & (table >= 0)
    segment = torch.where(kept, first + torch.cumsum(kept.long(), 0), torch.zeros_like(counts))
    stuff_ids = segment[sem]
    return torch.where(free & (stuff_ids > 0), stuff_ids.to(torch.int32), ids), segment, counts


def inverse_sigmoid(probs: torch.Tensor, limit: float = 16.0) -> torch.Tensor:
    """Logits of probabilities, clamped at +-``limit`` (sigmoid(16) = 1 - 1e-7)."""
    p = probs.float().clamp(1e-7, 1 - 1e-7)
    return (torch.log(p) - torch.log1p(-p)).clamp(-limit, limit)


def remove_duplicate_rows(masks: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor, iou_thresh: float,
                          class_agnostic: bool = False) -> torch.Tensor:
    """Greedy mask-IoU suppression over the ``keep`` (N,) rows of (N, H, W) bool masks, highest score
    first -> (N,) bool: row i goes when its IoU with a kept earlier row of its class (of any class when
    ``class_agnostic``) exceeds ``iou_thresh``. The rule runs row by row (N small vector steps; it
    traces)."""
    n = masks.shape[0]
    flat = masks.flatten(1).float()
    inter = flat @ flat.T
    area = flat.sum(1)
    dup = inter / (area[:, None] + area[None] - inter).clamp(min=1) > iou_thresh
    if not class_agnostic:
        dup = dup & (labels[:, None] == labels[None])
    index = torch.arange(n, device=masks.device)
    kept = torch.zeros_like(keep)
    for i in range(n):   # kept holds the decisions of rows before i only
        ok = keep[i] & ~(dup[i] & kept).any()
        kept = kept | ((index == i) & ok)
    return kept


def channel_segments(counts: torch.Tensor, n_stuff: int, n_inst: int, min_area: float) -> torch.Tensor:
    """UPSNet's segment id of every panoptic channel (C,) int64, from its winning pixel count (C,):
    instances that win somewhere first, in channel (score) order, then stuff channels winning at least
    ``min_area`` pixels; 0 is VOID (the unknown channel among them)."""
    inst_kept = counts[n_stuff:n_stuff + n_inst] > 0
    stuff = counts[:n_stuff]
    stuff_kept = (stuff > 0) & (stuff.float() >= min_area)
    inst_segment = torch.where(inst_kept, torch.cumsum(inst_kept.long(), 0), torch.zeros_like(inst_kept.long()))
    stuff_segment = torch.where(stuff_kept, inst_kept.long().sum() + torch.cumsum(stuff_kept.long(), 0),
                                torch.zeros_like(stuff))
    return torch.cat([stuff_segment, inst_segment, counts.new_zeros(counts.shape[0] - n_stuff - n_inst)])


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
    sem = stuff_argmax(semantic_logits, semantic_categories, stuff_source)
    ids, stuff_segment, _ = stuff_segments(ids, sem, semantic_categories, accepted.long().sum(), min_area)
    categories = torch.cat([thing_categories[labels[rank]], semantic_categories])
    seg_scores = torch.cat([scores[rank], torch.ones_like(semantic_categories, dtype=torch.float32)])
    return _outputs(ids, d + semantic_categories.shape[0], torch.cat([segment, stuff_segment]), categories,
                    seg_scores)


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
    logits = inverse_sigmoid(masks[rank])
    unique = remove_duplicate_rows(logits > float(torch.logit(torch.tensor(mask_thresh))), labels, keep,
                                   duplicate_iou, class_agnostic)
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
    channel_segment = channel_segments(counts, n_stuff, d, min_area)
    ids = channel_segment[winner].to(torch.int32)
    categories = torch.cat([thing_categories[labels], semantic_categories[stuff]])
    seg_scores = torch.cat([scores.float(), sem.new_ones(n_stuff)])
    segment = torch.cat([channel_segment[n_stuff:n_stuff + d], channel_segment[:n_stuff]])
    return _outputs(ids, d + n_stuff, segment, categories, seg_scores)


__all__ = ["heuristic_graph_merge", "upsnet_graph_merge", "pad_rows", "PANOPTIC_OUTPUTS", "semantic_argmax",
           "stuff_argmax", "stuff_segments", "inverse_sigmoid", "remove_duplicate_rows", "channel_segments"]
