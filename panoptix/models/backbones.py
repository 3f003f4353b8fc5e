"""Backbones: timm ``features_only`` networks returning C2..C5, with frozen norms and freeze-at-stage.

Weights load only from a local file the user names (``.safetensors`` or a torch state dict read
with ``weights_only=True``); nothing is downloaded.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Literal, Optional, Sequence

import timm
import torch
from timm.utils.model import freeze_batch_norm_2d
from torch import nn

from panoptix.errors import PanoptixError
from panoptix.models.layers import group_norm

Norm = Literal["frozen_bn", "bn", "gn"]

# Names the issue and the papers use; any other timm model with features_only support works too.
KNOWN_BACKBONES = ("resnet18", "resnet50", "resnet101", "resnext101_64x4d", "legacy_senet154")
# Classifier parameters of timm models that a features_only network does not have.
_CLASSIFIER_PREFIXES = ("fc.", "last_linear.", "head.", "classifier.")


class BackboneWeightsError(PanoptixError, ValueError):
    """A backbone weights file is missing, unreadable, or does not fit the network."""


class TimmBackbone(nn.Module):
    """C2..C5 feature maps from a timm ``features_only`` model.

    Args:
        name: timm model name (e.g. ``"resnet50"``, ``"resnext101_64x4d"``, ``"legacy_senet154"``).
        norm: ``"frozen_bn"`` (detectron2's default with pretrained weights), ``"bn"`` (trainable)
            or ``"gn"`` (GroupNorm, 32 groups; for training from scratch).
        freeze_at: 0 trains everything; 1 freezes the stem; k >= 2 freezes the stem and stages
            2..k (detectron2's ``FREEZE_AT``; 2 is its default).
        weights: local path of ImageNet weights for ``name`` (safetensors or torch state dict).
        channels: optional per-stage widths, for tiny ResNets (e.g. ``(16, 32, 64, 128)``).
        stem_width: optional stem width (ResNets only).

    Forward: (B, 3, H, W) normalised images -> ``OrderedDict`` ``c2..c5`` of (B, C_i, H/s_i, W/s_i),
    strides 4, 8, 16, 32.
    """

    def __init__(self, name: str = "resnet50", norm: Norm = "frozen_bn", freeze_at: int = 2,
                 weights: Optional[str | Path] = None, channels: Optional[Sequence[int]] = None,
                 stem_width: Optional[int] = None) -> None:
        super().__init__()
        kwargs = {}
        if channels is not None:
            kwargs["channels"] = tuple(channels)
        if stem_width is not None:
            kwargs["stem_width"] = stem_width
        if norm == "gn":
            kwargs["norm_layer"] = partial(_GroupNorm)
        elif norm not in ("frozen_bn", "bn"):
            raise ValueError(f"unknown backbone norm {norm!r}; expected 'frozen_bn', 'bn' or 'gn'")
        try:
            body = timm.create_model(name, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4),
                                     **kwargs)
        except RuntimeError as err:  # timm: "Unknown model (...)"
            raise ValueError(f"unknown backbone {name!r}: {err}") from None
        self.name = name
        if weights is not None:
            load_backbone_weights(body, weights)
        if norm == "frozen_bn":
            body = freeze_batch_norm_2d(body)
        self.body = body
        self.out_channels: list[int] = list(body.feature_info.channels())
        self.strides: list[int] = list(body.feature_info.reduction())
        self._freeze(freeze_at)

    def _freeze(self, freeze_at: int) -> None:
        stages = [m.split(".")[0] for m in self.body.feature_info.module_name()]
        if not 0 <= freeze_at <= len(stages) + 1:
            raise ValueError(f"freeze_at must be in 0..{len(stages) + 1}, got {freeze_at}")
        if freeze_at == 0:
            return
        last = stages[freeze_at - 2] if freeze_at >= 2 else None
        for child_name, child in self.body.named_children():
            if child_name == stages[0] and last is None:
                break
            for p in child.parameters():
                p.requires_grad_(False)
            if child_name == last:
                break

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.body(x)
        return OrderedDict((f"c{i + 2}", f) for i, f in enumerate(feats))


class _GroupNorm(nn.GroupNorm):
    """timm passes ``norm_layer(num_features)``; use 32 groups, fewer for narrow layers."""

    def __init__(self, num_channels: int, **_: object) -> None:
        g = group_norm(num_channels)
        super().__init__(g.num_groups, num_channels)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a torch state dict, never unpickling arbitrary objects.

    A torch file that wraps the weights under ``"state_dict"`` or ``"model"`` is unwrapped and a
    DDP ``module.`` prefix is stripped.
    """
    from panoptix.engine.checkpoint import safe_torch_load

    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as err:  # safetensors raises its own SafetensorError
            raise BackboneWeightsError(f"{path}: not a readable safetensors file ({err})") from None
    else:
        state = safe_torch_load(path)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneWeightsError(f"{path}: expected a mapping of parameter names to tensors")
    return {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}


def load_backbone_weights(body: nn.Module, path: str | Path) -> None:
    """Load timm ImageNet weights into a ``features_only`` network; the classifier keys are dropped.

    Raises:
        BackboneWeightsError: file missing or unreadable, or keys/shapes that do not fit (listed).
    """
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    own = body.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:5])}{more}")
        raise BackboneWeightsError(f"{path} does not fit this backbone: " + "; ".join(parts))
    body.load_state_dict(state, strict=False)


__all__ = ["TimmBackbone", "BackboneWeightsError", "load_backbone_weights", "read_state_dict", "KNOWN_BACKBONES"]
