"""Semantic (stuff) heads on P2-P5: the shared base with its loss, and the Panoptic FPN and
deformable heads. OANet's stuff head is in `panoptix.models.heads.oanet_stuff`.

Every head maps ``{p2..p5}`` (B, C, H/s, W/s) to logits (B, num_classes, H/4, W/4) and computes its
own loss from the padded (B, H, W) target (255 = ignore): ``head(feats, targets) -> (logits,
{"loss_seg": ...})``; ``head(feats) -> (logits, {})``. The number of classes follows the target
variant of the system (``"stuff_things"``: stuff + one "things" class; ``"all"``: every category).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from panoptix.data.meta import IGNORE_INDEX
from panoptix.models.layers import ConvGNReLU, CoordConvGNReLU, adaptive_pool
from panoptix.registry import SEMANTIC_HEADS, Configurable

LEVELS = ("p2", "p3", "p4", "p5")


def semantic_loss(logits: torch.Tensor, target: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """Pixelwise cross-entropy at input resolution, VOID (255) ignored.

    Args:
        logits: (B, K, H/4, W/4) head output, upsampled 4x here as in Panoptic FPN.
        target: (B, H, W) int64 semantic map padded with 255.
    """
    up = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
    if (target != IGNORE_INDEX).any():
        return weight * F.cross_entropy(up, target, ignore_index=IGNORE_INDEX)
    return up.sum() * 0.0


def upsample_concat(maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of each map to ``size``, concatenated on channels."""
    return torch.cat([m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                      for m in maps], dim=1)


def fpn_towers(in_channels: int, channels: int, coord_levels: Sequence[str] = ()) -> nn.ModuleList:
    """Panoptic FPN's towers on P2-P5: max(1, i) conv3x3-GN-ReLU layers for level i (CoordConv
    layers on the levels named in ``coord_levels``); `aggregate_levels` runs them."""
    def block(level: str, k: int) -> nn.Module:
        cin = in_channels if k == 0 else channels
        return CoordConvGNReLU(cin, channels) if level in coord_levels else ConvGNReLU(cin, channels)

    return nn.ModuleList(nn.Sequential(*[block(level, k) for k in range(max(1, i))]) for i, level in enumerate(LEVELS))


def aggregate_levels(towers: nn.ModuleList, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Each level through its tower with a 2x bilinear upsampling after every layer (none for P2),
    brought to P2's size and summed: (B, channels, H/4, W/4)."""
    size = feats["p2"].shape[-2:]
    out = 0
    for i, (level, tower) in enumerate(zip(LEVELS, towers)):
        x = feats[level]
        for block in tower:
            x = block(x)
            if i > 0:
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        out = out + (x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False))
    return out


class SemanticHead(Configurable, nn.Module):
    """Base of the semantic heads: subclasses build ``self.classifier`` and implement `features`.

    A head may also build ``self.embedding`` ((B, C', h, w) features -> (B, in_channels, h, w)):
    then `forward_with_feature` returns that *semantic feature* at stride 8, which HTC adds to its
    RoI features (AntVisionPS's LWL-HTC: the fused head, or the DC head in its place).

    Args:
        in_channels, num_classes: from the system (FPN width; classes of the target variant).
        loss_weight: lambda of the semantic loss in the system's total.
    """

    derived = ("in_channels", "num_classes")
    feature_stride = 8

    def __init__(self, num_classes: int, loss_weight: float) -> None:
        super().__init__()
        self.num_classes, self.loss_weight = num_classes, loss_weight
        self.embedding: nn.Module | None = None

    @property
    def provides_feature(self) -> bool:
        return self.embedding is not None

    def features(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, C', h, w) features that ``self.classifier`` classifies."""
        raise NotImplementedError

    def forward_with_feature(self, feats: Mapping[str, torch.Tensor], targets: torch.Tensor | None = None
                             ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
        """Logits (B, K, H/4, W/4), losses, and the semantic feature (B, in_channels, H/8, W/8), or
        None when the head builds no ``embedding``."""
        x = self.features(feats)
        logits = self.classifier(x)
        quarter = feats["p2"].shape[-2:]
        if logits.shape[-2:] != quarter:
            logits = F.interpolate(logits, size=quarter, mode="bilinear", align_corners=False)
        feature = None
        if self.embedding is not None:
            feature = self.embedding(x)
            eighth = feats["p3"].shape[-2:]
            if feature.shape[-2:] != eighth:
                feature = adaptive_pool(feature, (int(eighth[0]), int(eighth[1])), "avg")
        losses = {} if targets is None else {"loss_seg": semantic_loss(logits, targets, self.loss_weight)}
        return logits, losses, feature

    def forward(self, feats: Mapping[str, torch.Tensor], targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, losses, _ = self.forward_with_feature(feats, targets)
        return logits, losses


def semantic_embedding(channels: int, out_channels: int) -> nn.Module:
    """The semantic-feature projection: 1x1 conv + ReLU (HTC's ``conv_embedding``)."""
    return nn.Sequential(nn.Conv2d(channels, out_channels, 1), nn.ReLU(inplace=True))


@SEMANTIC_HEADS.register("fpn")
class FPNSemanticHead(SemanticHead):
    """The Panoptic FPN head (Kirillov et al. 2019): each level is brought to 1/4 scale by repeated
    conv3x3-GN-ReLU + 2x bilinear upsampling (one conv for P2), the levels are summed and a 1x1
    convolution classifies.

    Args:
        channels: width of the conv stacks (128 in the paper).
        loss_weight: lambda (0.5: detectron2's Panoptic FPN; OANet Table 1 prefers 0.25).
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 128, loss_weight: float = 0.5) -> None:
        super().__init__(num_classes, loss_weight)
        self.towers = fpn_towers(in_channels, channels)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def features(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return aggregate_levels(self.towers, feats)


@SEMANTIC_HEADS.register("deformable")
class DeformableSemanticHead(SemanticHead):
    """The head of the COCO 2019 entry and AntVisionPS (UPSNet-style): one deformable conv3x3-GN-ReLU
    stack applied to each level with shared weights, upsampled to 1/4, concatenated, then a 1x1 classifier.

    Args:
        channels: width of the stack (128).
        deform_convs: deformable layers in the stack (UPSNet uses 2).
        loss_weight: lambda.
        semantic_feature: also project the features to a stride-8 semantic feature for HTC's RoI
            fusion (AntVisionPS's LWL-HTC "DC head" in place of HTC's fused head).
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 128, deform_convs: int = 2,
                 loss_weight: float = 0.5, semantic_feature: bool = False) -> None:
        super().__init__(num_classes, loss_weight)
        self.shared = nn.Sequential(*[ConvGNReLU(in_channels if k == 0 else channels, channels, deformable=True)
                                      for k in range(deform_convs)])
        self.classifier = nn.Conv2d(channels * len(LEVELS), num_classes, kernel_size=1)
        if semantic_feature:
            self.embedding = semantic_embedding(channels * len(LEVELS), in_channels)

    def features(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return upsample_concat([self.shared(feats[level]) for level in LEVELS], feats["p2"].shape[-2:])


__all__ = ["SemanticHead", "semantic_embedding", "FPNSemanticHead", "DeformableSemanticHead", "semantic_loss",
           "upsample_concat", "LEVELS", "fpn_towers", "aggregate_levels"]
