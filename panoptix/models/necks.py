"""Necks: FPN P2-P6 (or P2-P7) on ``torchvision.ops.FeaturePyramidNetwork``, optionally deformable on P3-P5,
optionally followed by Libra R-CNN's balanced feature pyramid (`panoptix.models.bfp`)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from panoptix.models.bfp import BalancedFeaturePyramid
from panoptix.models.layers import DeformConv3x3
from panoptix.registry import NECKS, Configurable

# Names of the FPN outputs in the order torchvision's detection heads expect them (P2..P5, P6, P7).
FPN_LEVELS = ("p2", "p3", "p4", "p5", "p6", "p7")


@NECKS.register("fpn")
class FPN(Configurable, nn.Module):
    """Feature pyramid P2-P6 (P6 = stride-2 max-pool of P5, as in Mask R-CNN) or P2-P7.

    Args:
        in_channels: channels of C2..C5.
        out_channels: width of every pyramid level (256 in the papers).
        deformable_levels: pyramid levels whose 3x3 output convolution is deformable
            (the COCO 2019 entry, S. Liu et al. 2019, uses P3, P4 and P5); offsets start at zero.
        top_levels: ``"maxpool"`` (P6, Mask R-CNN) or ``"p6p7"`` (P6 = stride-2 3x3 conv of P5,
            P7 = the same on ReLU(P6): FCOS, whose detector runs on P3-P7).
        bfp: follow the FPN with Libra R-CNN's balanced feature pyramid (integrate, refine,
            strengthen; Pang et al. 2019), as AntVisionPS's E-UPS does.
        bfp_refine_level: the pyramid level (index into the outputs: 2 = P4, stride 16) at whose
            size the levels are integrated (Libra's ``refine_level=2``).
        bfp_refine: ``"non_local"`` (Libra's: an embedded-Gaussian non-local block), ``"conv"`` (a
            3x3 conv) or ``"none"``.

    Forward: ``{c2..c5}`` -> ``OrderedDict`` ``p2..p6`` (or ``p2..p7``) of (B, out_channels, H/s, W/s),
    s = 4..64 (128).
    """

    derived = ("in_channels",)

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256,
                 deformable_levels: Sequence[str] = (), top_levels: Literal["maxpool", "p6p7"] = "maxpool",
                 bfp: bool = False, bfp_refine_level: int = 2,
                 bfp_refine: Literal["non_local", "conv", "none"] = "non_local") -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"FPN expects 4 input levels (C2..C5), got {len(in_channels)}")
        unknown = set(deformable_levels) - set(FPN_LEVELS[:4])
        if unknown:
            raise ValueError(f"deformable_levels must be among p2..p5, got {sorted(unknown)}")
        top = LastLevelMaxPool() if top_levels == "maxpool" else LastLevelP6P7(out_channels, out_channels)
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels, extra_blocks=top)
        for level in deformable_levels:
            self.fpn.layer_blocks[FPN_LEVELS.index(level)] = DeformConv3x3(out_channels, out_channels)
        self.out_channels = out_channels
        self.deformable_levels = tuple(deformable_levels)
        self.top_levels = top_levels
        num_levels = 5 if top_levels == "maxpool" else 6
        self.bfp = BalancedFeaturePyramid(out_channels, num_levels, bfp_refine_level, bfp_refine) if bfp else None

    def forward(self, feats: OrderedDict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        out = list(self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats.values()))).values())
        if self.bfp is not None:
            out = self.bfp(out)
        return OrderedDict(zip(FPN_LEVELS, out))
