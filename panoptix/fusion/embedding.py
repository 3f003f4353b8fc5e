"""CIAE's merge (CIAE, Gao et al. 2021, section IV-C, Eq. 16): every pixel goes to the query embedding it is most
similar to, by one matrix product.

Queries are the stuff classes' memory embeddings followed by one embedding per detection (read
from the embedding map where the detection came from). S = P V^T; the similarity to an instance is
set to 0 outside its predicted box (the remote-instance filter, section IV-B); each pixel takes the
argmax. Thing segments keep the detector's class and score; stuff segments under the area limit
become VOID. `assign_segments` is the tensor part (no Python loop, no data-dependent shape: it
exports to ONNX); `embedding_fusion` wraps it into a `PanopticResult`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from panoptix.fusion.area import stuff_area_limit
from panoptix.structures import PanopticResult, SegmentInfo


def box_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W, N) bool: pixel centres inside each (N, 4) xyxy box (instances last, the layout of
    `assign_segments`' similarity matrix)."""
    h, w = size
    ys = torch.arange(h, device=boxes.device, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=boxes.device, dtype=torch.float32) + 0.5
    in_x = (xs[:, None] >= boxes[None, :, 0]) & (xs[:, None] <= boxes[None, :, 2])   # (W, N)
    in_y = (ys[:, None] >= boxes[None, :, 1]) & (ys[:, None] <= boxes[None, :, 3])   # (H, N)
    return in_y[:, None, :] & in_x[None, :, :]


def assign_segments(embeddings: torch.Tensor, stuff_queries: torch.Tensor, instance_queries: torch.Tensor,
                    boxes: torch.Tensor, stuff_min_area: float = 4096.0, box_filter: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel assignment of Eq. 16.

    Args:
        embeddings: (E, H, W) L2-normalised pixel embeddings P.
        stuff_queries: (S, E) unit memory embeddings of the stuff classes.
        instance_queries: (N, E) unit embeddings of the detections.
        boxes: (N, 4) xyxy detection boxes in pixels of (H, W).
        stuff_min_area: stuff segments with fewer pixels become VOID.
        box_filter: set the similarity to an instance to 0 outside its box.

    Returns:
        ids (H, W) int32: 0 = VOID, 1..S = stuff query s-1, S+1..S+N = detection n-S-1;
        areas (S + N,) int64 pixels of each query's segment after the stuff area limit.
    """
    s, n = stuff_queries.shape[0], instance_queries.shape[0]
    h, w = embeddings.shape[-2:]
    queries = torch.cat([stuff_queries, instance_queries]).float()
    # (H*W, Q) with queries last: the product and the argmax both run over contiguous memory.
    sim = embeddings.float().flatten(1).T @ queries.T                       # S = P V^T
    if box_filter:  # no test of n: a traced export must keep the filter whatever its example detected
        outside = ~box_masks(boxes, (h, w)).reshape(h * w, n)              # (H*W, N), contiguous
        sim[:, s:].masked_fill_(outside, 0.0)                               # in place: no (H*W, Q) copy
    best = sim.argmax(1)                                                     # (H*W,)
    areas = torch.zeros(s + n, dtype=torch.int64, device=best.device).scatter_add_(0, best, torch.ones_like(best))
    small = (torch.arange(s + n, device=best.device) < s) & (areas < stuff_min_area)
    ids = torch.where(small[best], torch.zeros_like(best), best + 1).to(torch.int32).reshape(h, w)
    areas = torch.where(small, torch.zeros_like(areas), areas)
    return ids, areas


def segments_of(ids: torch.Tensor, areas: torch.Tensor, stuff_categories: Sequence[int],
                thing_categories: Sequence[int], labels: torch.Tensor, scores: torch.Tensor,
                instances: object | None = None) -> PanopticResult:
    """A `PanopticResult` from `assign_segments`' output: one segment per query with pixels."""
    s = len(stuff_categories)
    segments = []
    for q, area in enumerate(areas.tolist()):
        if area <= 0:
            continue
        if q < s:
            segments.append(SegmentInfo(q + 1, int(stuff_categories[q]), False, 1.0, int(area)))
        else:
            segments.append(SegmentInfo(q + 1, int(thing_categories[int(labels[q - s])]), True,
                                        float(scores[q - s]), int(area)))
    return PanopticResult(ids, segments, instances=instances)


def embedding_fusion(embeddings: torch.Tensor, stuff_queries: torch.Tensor, instance_queries: torch.Tensor,
                     boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
                     stuff_categories: Sequence[int], thing_categories: Sequence[int],
                     stuff_min_area: float = 4096, stuff_min_area_fraction: float | None = None,
                     box_filter: bool = True) -> PanopticResult:
    """`assign_segments` + `segments_of`; ``stuff_min_area_fraction`` (of H*W) replaces the pixel limit when set."""
    h, w = embeddings.shape[-2:]
    limit = stuff_area_limit((h, w), stuff_min_area, stuff_min_area_fraction)
    ids, areas = assign_segments(embeddings, stuff_queries, instance_queries, boxes, float(limit), box_filter)
    return segments_of(ids, areas, stuff_categories, thing_categories, labels, scores)


__all__ = ["assign_segments", "segments_of", "embedding_fusion", "box_masks"]
