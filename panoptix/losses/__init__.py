"""Losses shared by systems (CIAE's embedding loss, uncertainty weighting, ...) and the one rule
for what a training step minimises."""

from __future__ import annotations

from collections.abc import Mapping

import torch

METRIC_PREFIX = "metric/"


def total_loss(losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The sum a training step minimises: every entry whose key starts with ``loss``. Other entries
    (``metric/...``: an uncertainty weighting's raw task losses and log-variances) are logged only."""
    return sum(v for k, v in losses.items() if k.startswith("loss"))


__all__ = ["total_loss", "METRIC_PREFIX"]
