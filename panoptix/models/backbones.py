"""Backbones: timm ``features_only`` networks returning C2..C5, with frozen norms and freeze-at-stage.

Weights come from a local file the user names (``.safetensors`` or a torch state dict read with
``weights_only=True``), or, when the user opts in with ``weights: timm`` or ``weights: hf-hub:...``,
from timm's download into its cache. Offline, that download fails with one line naming the
local-file alternative.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Literal

import timm
import torch
from timm.utils.model import freeze_batch_norm_2d
from torch import nn

from panoptix.errors import PanoptixError
from panoptix.models.layers import group_norm
from panoptix.registry import BACKBONES, ConfigError, Configurable, did_you_mean

Norm = Literal["frozen_bn", "bn", "gn"]

# Names the issue and the papers use; any other timm model with features_only support works too.
KNOWN_BACKBONES = ("resnet18", "resnet50", "resnet101", "resnext101_64x4d", "legacy_senet154", "hrnet_w48",
                   "hrnet_w18_small")
# Classifier parameters of timm models that a features_only network does not have.
_CLASSIFIER_PREFIXES = ("fc.", "last_linear.", "head.", "classifier.")


class BackboneWeightsError(PanoptixError, ValueError):
    """A backbone weights file is missing, unreadable, cannot be fetched, or does not fit the network."""


class StemWidthError(ConfigError):
    """``stem_width`` was set for an architecture whose stem timm builds at a fixed width."""


def check_stem_width(body: nn.Module, arch: str, stem_width: int | None) -> None:
    """timm's ResNets take ``stem_width`` but apply it to deep stems only (``resnet18d``, ``resnet50c``...):
    a plain ResNet keeps its single 7x7 conv at 64 channels whatever is asked. Refuse the ignored
    setting rather than build a stem of another width than the config says."""
    stem = getattr(body, "conv1", None)
    if stem_width is not None and isinstance(stem, nn.Conv2d) and stem.out_channels != stem_width:
        raise StemWidthError(f"backbone {arch!r}: stem_width={stem_width} has no effect, its single 7x7 stem conv is "
                             f"{stem.out_channels} channels wide in timm (stem_width applies to deep stems, e.g. "
                             f"'{arch}d'); remove stem_width or choose a deep-stem architecture")


def is_hub_weights(weights: str | Path | None) -> bool:
    """Whether ``weights`` asks timm to fetch them (``"timm"`` or an ``"hf-hub:"`` name)."""
    return isinstance(weights, str) and (weights == "timm" or weights.startswith("hf-hub:"))


@BACKBONES.register("timm")
class TimmBackbone(Configurable, nn.Module):
    """C2..C5 feature maps from a timm ``features_only`` model.

    Args:
        arch: timm model name (e.g. ``"resnet50"``, ``"resnext101_64x4d"``, ``"legacy_senet154"``).
        norm: ``"frozen_bn"`` (detectron2's default with pretrained weights), ``"bn"`` (trainable;
            SyncBatchNorm under DDP) or ``"gn"`` (GroupNorm, 32 groups; for training from scratch).
        freeze_at: 0 trains everything; 1 freezes the stem; k >= 2 freezes the stem and stages
            2..k (detectron2's ``FREEZE_AT``; 2 is its default). BatchNorm layers in frozen stages
            are frozen too (their statistics would otherwise drift).
        weights: ImageNet weights: a local file (safetensors or torch state dict), ``"timm"`` (timm's
            default pretrained weights of ``arch``, downloaded into timm's cache) or an
            ``"hf-hub:org/name"`` model; None for random initialisation.
        channels: optional per-stage widths, for tiny ResNets (e.g. ``(16, 32, 64, 128)``).
        stem_width: optional stem width (ResNets only).
        allow_frozen_without_weights: frozen BN or ``freeze_at > 0`` without weights trains a
            network whose frozen parts stay random (frozen BN of random init is the identity), so
            it is refused unless this is set.

    Forward: (B, 3, H, W) normalised images -> ``OrderedDict`` ``c2..c5`` of (B, C_i, H/s_i, W/s_i),
    strides 4, 8, 16, 32.
    """

    def __init__(self, arch: str = "resnet50", norm: Norm = "frozen_bn", freeze_at: int = 2,
                 weights: str | Path | None = None, channels: Sequence[int] | None = None,
                 stem_width: int | None = None, allow_frozen_without_weights: bool = False) -> None:
        super().__init__()
        if norm not in ("frozen_bn", "bn", "gn"):
            raise ValueError(f"unknown backbone norm {norm!r}; expected 'frozen_bn', 'bn' or 'gn'")
        if weights is None and (norm == "frozen_bn" or freeze_at > 0) and not allow_frozen_without_weights:
            raise BackboneWeightsError(
                f"backbone {arch!r} has norm={norm} and freeze_at={freeze_at} but no weights: its frozen parts would "
                f"stay random. Set backbone.weights (a local file, 'timm' or 'hf-hub:...'), or train from scratch "
                f"with norm=gn and freeze_at=0, or set backbone.allow_frozen_without_weights=true")
        kwargs = {}
        if channels is not None:
            kwargs["channels"] = tuple(channels)
        if stem_width is not None:
            kwargs["stem_width"] = stem_width
        if arch.startswith("hrnet"):
            # A segmentation HRNet reads its four branch outputs (HRNet-W48: 48/96/192/384 channels),
            # not timm's default classification features (the "incre" blocks, 128..1024 channels).
            kwargs["feature_location"] = ""
            if norm == "gn":
                raise ValueError(f"{arch}: timm's HRNet has no norm_layer option; use norm=bn (trainable, "
                                 f"SyncBatchNorm under DDP) or frozen_bn")
        if norm == "gn":
            kwargs["norm_layer"] = partial(_GroupNorm)
        body = _create(arch, weights, kwargs)
        check_stem_width(body, arch, stem_width)
        self.arch = arch
        if weights is not None and not is_hub_weights(weights):
            load_backbone_weights(body, weights)
        if norm == "frozen_bn":
            body = freeze_batch_norm_2d(body)
        self.body = body
        self.out_channels: list[int] = list(body.feature_info.channels())
        self.strides: list[int] = list(body.feature_info.reduction())
        self._freeze(freeze_at)

    @classmethod
    def check_config(cls, cfg: dict, where: str) -> None:
        """An architecture timm does not know is refused at validation, with the closest name."""
        arch, weights = cfg["arch"], cfg.get("weights")
        if not timm.is_model(arch) and not (isinstance(weights, str) and weights.startswith("hf-hub:")):
            raise ConfigError(f"{where}.arch: timm has no architecture {arch!r}{did_you_mean(arch, timm.list_models())}"
                              f" (timm {timm.__version__}; timm.list_models() lists them)")

    @classmethod
    def from_config(cls, cfg: dict, weights_from_checkpoint: bool = False, config_check: bool = False,
                    **context: object) -> TimmBackbone:
        """``weights_from_checkpoint``: a checkpoint will overwrite every weight, so none are loaded.
        ``config_check``: a dry build that validates a config (`check_model_config`), which refuses an
        ignored ``stem_width`` where a checkpoint written before that check is let through."""
        if weights_from_checkpoint:
            cfg = {**cfg, "weights": None, "allow_frozen_without_weights": True}
            try:
                return cls(**cfg)
            except StemWidthError:  # written before the check: the weights are those of timm's own stem
                if config_check:
                    raise
                return cls(**{**cfg, "stem_width": None})
        return cls(**cfg)

    def _freeze(self, freeze_at: int) -> None:
        stages = [m.split(".")[0] for m in self.body.feature_info.module_name()]
        if not 0 <= freeze_at <= len(stages) + 1:
            raise ValueError(f"freeze_at must be in 0..{len(stages) + 1}, got {freeze_at}")
        if freeze_at == 0:
            return
        children = dict(self.body.named_children())
        if any(stage not in children for stage in stages):
            raise ValueError(f"freeze_at={freeze_at} is not supported for {self.arch!r}: its feature stages "
                             f"{stages} are not top-level modules; use freeze_at=0")
        last = stages[freeze_at - 2] if freeze_at >= 2 else None
        for child_name, child in list(self.body.named_children()):
            if child_name == stages[0] and last is None:
                break
            for p in child.parameters():
                p.requires_grad_(False)
            frozen = freeze_batch_norm_2d(child)
            if frozen is not child:
                setattr(self.body, child_name, frozen)
            if child_name == last:
                break

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)
        return OrderedDict((f"c{i + 2}", f) for i, f in enumerate(feats))


def _create(arch: str, weights: str | None, kwargs: dict) -> nn.Module:
    """The timm features_only network; with hub weights, fetched by timm (one-line error offline)."""
    name = weights if isinstance(weights, str) and weights.startswith("hf-hub:") else arch
    hub = is_hub_weights(weights)
    try:
        return timm.create_model(name, pretrained=hub, features_only=True, out_indices=(1, 2, 3, 4), **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(f"unknown backbone {name!r}: {err}") from None
        if not hub:
            raise
        reason = err
    except Exception as err:  # hub/network errors come from huggingface_hub, requests, urllib or OSError
        if not hub:
            raise
        reason = err
    first = (str(reason).strip().splitlines() or [type(reason).__name__])[0][:160]
    raise BackboneWeightsError(
        f"could not fetch ImageNet weights {weights!r} for {arch!r} ({type(reason).__name__}: {first}); without "
        f"internet, download them once elsewhere and pass the file: backbone.weights=/path/to/{arch}.safetensors"
    ) from None


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
    from panoptix.weights import safe_torch_load

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
    from panoptix.weights import state_mismatch

    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    mismatch = state_mismatch(body.state_dict(), state, ignore=("num_batches_tracked",))
    if mismatch:
        raise BackboneWeightsError(f"{path} does not fit this backbone: {mismatch}")
    body.load_state_dict(state, strict=False)


__all__ = ["TimmBackbone", "BackboneWeightsError", "StemWidthError", "check_stem_width", "load_backbone_weights",
           "read_state_dict", "KNOWN_BACKBONES"]
