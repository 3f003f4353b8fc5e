"""Uncertainty-weighted multi-task loss (Kendall, Gal & Cipolla, CVPR 2018), as in AntVisionPS's
LWL-HTC: each task's loss is weighted by a learned homoscedastic uncertainty.

With s = log sigma^2 (one unconstrained scalar per task, initialised to 0 so the first steps equal
the unweighted sum):

    classification-type task:  exp(-s) L + s / 2        (from (1 / sigma^2) L + log sigma)
    regression-type task:      exp(-s) L / 2 + s / 2    (from (1 / (2 sigma^2)) L + log sigma)

Applied to panoptic segmentation (spec section 5, recommended grouping): two classification-type
tasks, ``instance`` = every instance loss (RPN, box, mask: dominated by CE/BCE) and ``semantic``
= the semantic head's CE. s is clamped to [-clamp, clamp] (a clamped s gets no gradient) and kept
in float32 whatever the autocast; it carries ``no_weight_decay`` (the optimiser leaves it
undecayed) and lives in the model, so DDP averages its gradient like any other parameter.

The total may go negative (s/2 < 0 once a task is confident); that is expected. The raw task sums
and each s are returned under ``metric/...`` keys, which the trainer logs but does not add up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from panoptix.losses import METRIC_PREFIX
from panoptix.registry import LOSS_WEIGHTINGS, Configurable

REST = "*"


@LOSS_WEIGHTINGS.register("uncertainty")
class UncertaintyWeighting(Configurable, nn.Module):
    """Learned task weights over a system's loss dict.

    Args:
        tasks: task name -> the loss keys it sums; ``"*"`` takes every loss no other task names.
            Default: ``semantic`` = ``loss_seg``, ``instance`` = the rest.
        regression_tasks: tasks weighted as regression (exp(-s) / 2); the others as classification.
        init: initial s (0: sigma = 1, the unweighted sum).
        clamp: s is clamped to [-clamp, clamp] (6: weights between e^-6 and e^6).

    ``forward(losses)``: ``{key: (B-free) scalar}`` -> the weighted losses (same keys), one
    ``loss_uncertainty_<task>`` = s/2 per task, and detached ``metric/s_<task>`` and
    ``metric/<task>`` (the raw task sum). The weighted ``loss_*`` entries sum to the formula above.
    """

    no_weight_decay = True

    def __init__(self, tasks: Mapping[str, Sequence[str]] = {"instance": [REST], "semantic": ["loss_seg"]},  # noqa: B006
                 regression_tasks: Sequence[str] = (), init: float = 0.0, clamp: float = 6.0) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("uncertainty weighting needs at least one task")
        rest = [t for t, keys in tasks.items() if REST in keys]
        if len(rest) > 1:
            raise ValueError(f"only one task may take the remaining losses ('*'); got {rest}")
        unknown = sorted(set(regression_tasks) - set(tasks))
        if unknown:
            raise ValueError(f"regression_tasks {unknown} are not tasks; tasks: {sorted(tasks)}")
        self.tasks = {t: [k for k in keys if k != REST] for t, keys in tasks.items()}
        self.rest_task = rest[0] if rest else None
        self.regression = set(regression_tasks)
        self.clamp = float(clamp)
        self.log_vars = nn.ParameterDict({t: nn.Parameter(torch.tensor(float(init))) for t in tasks})

    def task_of(self, key: str) -> str:
        for task, keys in self.tasks.items():
            if key in keys:
                return task
        if self.rest_task is None:
            raise KeyError(f"loss {key!r} belongs to no task of {sorted(self.tasks)}; add it or a '*' task")
        return self.rest_task

    def log_variance(self, task: str) -> torch.Tensor:
        """s of a task, clamped, float32."""
        return self.log_vars[task].float().clamp(-self.clamp, self.clamp)

    def forward(self, losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        raw: dict[str, torch.Tensor] = {}
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            for key, value in losses.items():
                if not key.startswith("loss"):
                    out[key] = value
                    continue
                task = self.task_of(key)
                s = self.log_variance(task)
                factor = torch.exp(-s) * (0.5 if task in self.regression else 1.0)
                out[key] = factor * value.float()
                raw[task] = raw.get(task, 0.0) + value.detach().float()
            for task in self.tasks:
                s = self.log_variance(task)
                out[f"loss_uncertainty_{task}"] = 0.5 * s
                out[f"{METRIC_PREFIX}s_{task}"] = s.detach()
                if task in raw:
                    out[f"{METRIC_PREFIX}{task}"] = raw[task]
        return out


__all__ = ["UncertaintyWeighting"]
