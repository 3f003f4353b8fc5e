"""OANet's merge (seed 004, section 3.2): the heuristic merge with instances pasted in the order of
their spatial ranking scores (Eq. 3) instead of their detection scores.

The ranking scores come from the system's spatial ranking head (`panoptix.models.heads.ranking`),
which stores them in ``instances.extra["rank_scores"]``; this function only orders by them.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch

from panoptix.fusion.heuristic import heuristic_fusion
from panoptix.models.registry import FUSIONS
from panoptix.structures import Instances, PanopticResult

RANK_FIELD = "rank_scores"


@FUSIONS.register("ranking")
def ranking_fusion(instances: Optional[Instances], semantic_logits: torch.Tensor,
                   semantic_categories: Sequence[int], thing_categories: Sequence[int],
                   score_thresh: float = 0.5, overlap_thresh: float = 0.5, stuff_min_area: int = 4096,
                   stuff_min_area_fraction: Optional[float] = None,
                   stuff_source: Literal["argmax", "stuff_only"] = "argmax",
                   mask_thresh: float = 0.5) -> PanopticResult:
    """`heuristic_fusion` (same arguments) ordered by ``instances.extra["rank_scores"]``, (N,) in 0..1.

    The detection score still decides which instances pass ``score_thresh`` and is the score
    written with each segment. Raises ValueError when the instances carry no ranking scores.
    """
    return heuristic_fusion(instances, semantic_logits, semantic_categories, thing_categories,
                            score_thresh=score_thresh, overlap_thresh=overlap_thresh, stuff_min_area=stuff_min_area,
                            stuff_min_area_fraction=stuff_min_area_fraction, stuff_source=stuff_source,
                            mask_thresh=mask_thresh, order_by=RANK_FIELD)


__all__ = ["ranking_fusion", "RANK_FIELD"]
