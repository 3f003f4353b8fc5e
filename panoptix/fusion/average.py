"""Averaging several semantic outputs (TTA views, ensemble members, two-level ends) for one merge.

The heuristic merge only takes the argmax of the semantic map, so the log of the weighted mean
softmax serves it (mmseg's TTA semantics). UPSNet's merge compares the semantic logits with mask
logits and derives its "unknown" channel from them, so it is not invariant to the per-pixel constant
that separates log-probabilities from logits: fed log-probabilities, the unknown channel wins almost
everywhere (an E-UPS ensemble fell to PQ 7.1). For it, the models' logits themselves are averaged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from panoptix.fusion.needs import reads_logits


def average_semantic(maps: Sequence[torch.Tensor], weights: Sequence[float] | None = None,
                     logits: bool = False) -> torch.Tensor:
    """(K, H, W) logit maps (already un-flipped and at one size) -> one (K, H, W) map for the merge:
    the weighted mean of the logits (``logits=True``), else the log of the weighted mean softmax."""
    weights = [1.0] * len(maps) if weights is None else list(weights)
    total = float(sum(weights))
    if logits:
        return sum(w * m.float() for w, m in zip(weights, maps)) / total
    probs = sum(w * m.float().softmax(0) for w, m in zip(weights, maps)) / total
    return probs.clamp(min=1e-8).log()


__all__ = ["reads_logits", "average_semantic"]
