"""Optimiser parameter groups and DDP norm handling (detectron2's defaults)."""

from __future__ import annotations

import warnings
from typing import Any, Optional

from torch import nn

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm,
              nn.LocalResponseNorm)


def parameter_groups(model: nn.Module, weight_decay: float, weight_decay_norm: float = 0.0,
                     weight_decay_bias: Optional[float] = None) -> list[dict[str, Any]]:
    """Trainable parameters in groups by weight decay: norm-layer parameters get ``weight_decay_norm``
    (detectron2: 0), biases ``weight_decay_bias`` (None: ``weight_decay``), the rest ``weight_decay``.
    Each parameter appears once, even when shared."""
    bias_decay = weight_decay if weight_decay_bias is None else weight_decay_bias
    groups: dict[float, list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module, NORM_TYPES):
                decay = weight_decay_norm
            elif name == "bias":
                decay = bias_decay
            else:
                decay = weight_decay
            groups.setdefault(decay, []).append(p)
    return [{"params": ps, "weight_decay": wd} for wd, ps in groups.items()]


def prepare_norms(model: nn.Module, world_size: int, device_type: str = "cuda") -> nn.Module:
    """Under DDP, trainable BatchNorm layers become SyncBatchNorm (statistics over the whole batch,
    not each process's few images). PyTorch syncs only on accelerators; on CPU the layers stay
    per-process with a warning."""
    trainable_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and any(p.requires_grad for p in m.parameters())
                       for m in model.modules())
    if world_size <= 1 or not trainable_bn:
        return model
    if device_type == "cpu":
        warnings.warn("SyncBatchNorm needs an accelerator; on CPU each process keeps its own BatchNorm statistics",
                      stacklevel=2)
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


__all__ = ["parameter_groups", "prepare_norms", "NORM_TYPES"]
