"""Semantic (stuff) heads on P2-P5.

- ``"fpn"``: the Panoptic FPN head (Kirillov et al.): each level is brought to 1/4 scale by
  repeated conv3x3-GN-ReLU + 2x bilinear upsampling (one conv for P2), the levels are summed and
  a 1x1 convolution classifies.
- ``"deformable"``: the head of seeds 000/001 (UPSNet-style): the same deformable
  conv3x3-GN-ReLU stack applied to each level independently (shared weights), upsampled to 1/4,
  concatenated, then a 1x1 classifier.

Target variants (see `panoptix.data.targets`): ``"stuff_things"`` = stuff + one "things" class,
``"all"`` = every category (OANet's object context).
"""

from __future__ import annotations

from typing import Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from panoptix.data.meta import IGNORE_INDEX
from panoptix.models.layers import ConvGNReLU

HeadKind = Literal["fpn", "deformable"]
_LEVELS = ("p2", "p3", "p4", "p5")


class SemanticHead(nn.Module):
    """Semantic segmentation head.

    Args:
        in_channels: FPN width.
        num_classes: semantic classes of the target variant.
        kind: ``"fpn"`` or ``"deformable"``.
        channels: width of the conv stack (128 in Panoptic FPN).
        deform_convs: deformable conv layers per level (``kind="deformable"``; UPSNet uses 2).

    Forward: ``{p2..p5}`` (B, C, H/s, W/s) -> logits (B, num_classes, H/4, W/4).
    """

    def __init__(self, in_channels: int, num_classes: int, kind: HeadKind = "fpn", channels: int = 128,
                 deform_convs: int = 2) -> None:
        super().__init__()
        self.kind = kind
        if kind == "fpn":
            self.towers = nn.ModuleList(
                nn.Sequential(*[ConvGNReLU(in_channels if k == 0 else channels, channels) for k in range(max(1, i))])
                for i in range(len(_LEVELS)))
            cls_in = channels
        elif kind == "deformable":
            self.shared = nn.Sequential(*[ConvGNReLU(in_channels if k == 0 else channels, channels, deformable=True)
                                          for k in range(deform_convs)])
            cls_in = channels * len(_LEVELS)
        else:
            raise ValueError(f"unknown semantic head {kind!r}; expected 'fpn' or 'deformable'")
        self.classifier = nn.Conv2d(cls_in, num_classes, kernel_size=1)
        self.num_classes = num_classes

    def forward(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        size = feats["p2"].shape[-2:]
        if self.kind == "fpn":
            out = 0
            for i, (level, tower) in enumerate(zip(_LEVELS, self.towers)):
                x = feats[level]
                for block in tower:
                    x = block(x)
                    if i > 0:
                        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
                out = out + (x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear",
                                                                          align_corners=False))
        else:
            out = torch.cat([F.interpolate(self.shared(feats[level]), size=size, mode="bilinear", align_corners=False)
                             for level in _LEVELS], dim=1)
        return self.classifier(out)


def semantic_loss(logits: torch.Tensor, target: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """Pixelwise cross-entropy at input resolution, VOID/crowd (255) ignored.

    Args:
        logits: (B, K, H/4, W/4) head output, upsampled 4x here as in Panoptic FPN.
        target: (B, H, W) int64 semantic map padded with 255.
    """
    up = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    if (target != IGNORE_INDEX).any():
        return weight * F.cross_entropy(up.float(), target, ignore_index=IGNORE_INDEX)
    return up.sum() * 0.0


def resize_semantic_logits(logits: torch.Tensor, crop: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Logits of one padded image at 1/4 scale -> logits at the original image size.

    Args:
        logits: (K, H'/4, W'/4) head output for one image of the padded batch.
        crop: (height, width) of the resized image inside the padded batch (stride 1).
        size: (height, width) of the original image.

    Returns:
        (K, *size) logits.
    """
    full = F.interpolate(logits[None], scale_factor=4.0, mode="bilinear", align_corners=False)
    full = full[..., : crop[0], : crop[1]]
    return F.interpolate(full, size=size, mode="bilinear", align_corners=False)[0]
