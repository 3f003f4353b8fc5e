"""HTC's semantic branch (Chen et al. 2019, mmdet ``FusedSemanticHead``; spec section 2), used in a
panoptic system as the stuff head on panoptic labels (spec's recommended answer 4).

P2-P6 each go through a 1x1 conv + ReLU, are resized (bilinear, align_corners=True as mmdet) to the
fusion level P3 (stride 8) and summed; ``num_convs`` conv3x3 layers follow. A 1x1 conv gives the
logits, a separate 1x1 conv + ReLU the *semantic feature* (the FPN's width, stride 8) that the HTC
instance head adds to its box and mask RoI features. The logits are upsampled 2x to the semantic
heads' common 1/4 contract (the loss is our usual CE at input resolution, ``loss_weight`` 0.2 as
HTC's; mmdet instead downsamples the labels to 1/8).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from panoptix.models.heads.semantic import SemanticHead, semantic_embedding
from panoptix.models.layers import ConvGNReLU
from panoptix.registry import SEMANTIC_HEADS

FUSED_LEVELS = ("p2", "p3", "p4", "p5", "p6")


@SEMANTIC_HEADS.register("htc_fused")
class FusedSemanticHead(SemanticHead):
    """HTC's fused semantic head.

    Args:
        in_channels, num_classes: from the system.
        channels: width of the lateral and stacked convs (256).
        num_convs: conv3x3 layers after the fusion (4).
        norm: ``""`` (HTC's plain convs with ReLU) or ``"gn"`` (GroupNorm, for from-scratch models).
        loss_weight: lambda (HTC's 0.2).

    ``forward(feats, targets)`` -> logits (B, K, H/4, W/4: the stride-8 logits upsampled), losses;
    ``forward_with_feature`` also returns the semantic feature (B, in_channels, H/8, W/8).
    """

    fusion_level = "p3"

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, num_convs: int = 4, norm: str = "",
                 loss_weight: float = 0.2) -> None:
        super().__init__(num_classes, loss_weight)
        if norm not in ("", "gn"):
            raise ValueError(f"norm must be '' or 'gn', got {norm!r}")
        self.lateral = nn.ModuleList(nn.Sequential(nn.Conv2d(in_channels, channels, 1), nn.ReLU(inplace=True))
                                     for _ in FUSED_LEVELS)

        def conv() -> nn.Module:
            if norm == "gn":
                return ConvGNReLU(channels, channels)
            return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True))

        self.convs = nn.Sequential(*[conv() for _ in range(num_convs)])
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.embedding = semantic_embedding(channels, in_channels)

    def features(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        size = feats[self.fusion_level].shape[-2:]
        x = 0
        for level, lateral in zip(FUSED_LEVELS, self.lateral):
            y = lateral(feats[level])
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=True)
            x = x + y
        return self.convs(x)


__all__ = ["FusedSemanticHead", "FUSED_LEVELS"]
