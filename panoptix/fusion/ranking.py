"""OANet's merge (OANet, Liu et al. 2019, section 3.2): the heuristic merge with instances pasted in the order of
their spatial ranking scores (Eq. 3) instead of their detection scores.

The ranking scores come from the system's spatial ranking head (`panoptix.models.heads.ranking`),
which stores them in ``instances.extra["rank_scores"]``; this function only orders by them.

The seed replaces the detection score by the ranking score (its Fig. 7: person 0.997 / tie 0.662 by
detection, 0.325 / 0.878 by ranking), and that is the default (``order="rank"``). ``order="rank_x_score"``
(registered as the ``ranking_x_score`` merge) orders by their product instead, a variant of ours: the
ranking module sees only the masks' layout, never the image, so a low-confidence detection of the
wrong class can outrank the right one when ordered by the ranking score alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from panoptix.fusion.graph_merge import heuristic_graph_merge
from panoptix.fusion.heuristic import heuristic_fusion
from panoptix.fusion.needs import declare
from panoptix.registry import FUSIONS
from panoptix.structures import Instances, PanopticResult

# The system slot whose per-instance scores the ranking merges read, and its default component.
RANKING_HEAD = ("ranking_head", "spatial_ranking")

RANK_FIELD = "rank_scores"
ORDERS = ("rank", "rank_x_score")


@FUSIONS.register("ranking")
@declare(head=RANKING_HEAD, single_model=True, graph=heuristic_graph_merge, graph_defaults={"order": "rank"})
def ranking_fusion(instances: Instances | None, semantic_logits: torch.Tensor,
                   semantic_categories: Sequence[int], thing_categories: Sequence[int],
                   score_thresh: float = 0.5, overlap_thresh: float = 0.5, stuff_min_area: int = 4096,
                   stuff_min_area_fraction: float | None = None,
                   stuff_source: Literal["argmax", "stuff_only"] = "argmax",
                   mask_thresh: float = 0.5, order: Literal["rank", "rank_x_score"] = "rank") -> PanopticResult:
    """`heuristic_fusion` (same arguments) ordered by ``instances.extra["rank_scores"]``, (N,) in 0..1.

    ``order="rank_x_score"`` orders by ranking score times detection score instead. The detection
    score still decides which instances pass ``score_thresh`` and is the score written with each
    segment. Raises ValueError when the instances carry no ranking scores or ``order`` is unknown.
    """
    if order not in ORDERS:
        raise ValueError(f"ranking merge: order must be one of {ORDERS}, got {order!r}")
    field = RANK_FIELD
    if order == "rank_x_score" and instances is not None and len(instances):
        if RANK_FIELD not in instances.extra:
            raise ValueError(f"instances carry no {RANK_FIELD!r} to order by; the ranking merge needs a system "
                             f"with a ranking head")
        field = "rank_x_score"
        instances = instances.replace(extra={**instances.extra, field: instances.extra[RANK_FIELD] * instances.scores})
    return heuristic_fusion(instances, semantic_logits, semantic_categories, thing_categories,
                            score_thresh=score_thresh, overlap_thresh=overlap_thresh, stuff_min_area=stuff_min_area,
                            stuff_min_area_fraction=stuff_min_area_fraction, stuff_source=stuff_source,
                            mask_thresh=mask_thresh, order_by=field)


@FUSIONS.register("ranking_x_score")
@declare(head=RANKING_HEAD, single_model=True, graph=heuristic_graph_merge,
         graph_defaults={"order": "rank_x_score"})
def ranking_x_score_fusion(instances: Instances | None, semantic_logits: torch.Tensor,
                           semantic_categories: Sequence[int], thing_categories: Sequence[int],
                           score_thresh: float = 0.5, overlap_thresh: float = 0.5, stuff_min_area: int = 4096,
                           stuff_min_area_fraction: float | None = None,
                           stuff_source: Literal["argmax", "stuff_only"] = "argmax",
                           mask_thresh: float = 0.5) -> PanopticResult:
    """`ranking_fusion` with ``order="rank_x_score"``: a merge name for ``panoptix ablate``."""
    return ranking_fusion(instances, semantic_logits, semantic_categories, thing_categories,
                          score_thresh=score_thresh, overlap_thresh=overlap_thresh, stuff_min_area=stuff_min_area,
                          stuff_min_area_fraction=stuff_min_area_fraction, stuff_source=stuff_source,
                          mask_thresh=mask_thresh, order="rank_x_score")


__all__ = ["ranking_fusion", "ranking_x_score_fusion", "RANK_FIELD", "ORDERS", "RANKING_HEAD"]
