"""Libra R-CNN's balanced feature pyramid (Pang et al., CVPR 2019; AntVisionPS's E-UPS neck).

Integrate: every level is brought to the size of level ``refine_level`` (finer levels by adaptive
max-pooling, coarser ones by nearest upsampling) and the levels are averaged. Refine: an
embedded-Gaussian non-local block on that balanced feature (reduction 1, no activation on g, theta,
phi; its output conv starts at zero, so at initialisation the block is the identity). Strengthen:
the refined feature is resized back to each level (nearest up for finer levels, adaptive max-pool
down for coarser ones) and added to it. Reference behaviour: mmdet ``necks/bfp.py`` and
``plugins/non_local.py`` (spec section 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from panoptix.models.layers import adaptive_pool


class NonLocal2d(nn.Module):
    """Embedded-Gaussian non-local block: y = softmax(theta(x)^T phi(x) / sqrt(C')) g(x),
    out = x + W(y), with W initialised to zero (Wang et al. 2018; Libra's reduction 1: C' = C).

    The attention runs through ``scaled_dot_product_attention``: the same softmax (computed in
    float32 inside the kernel under AMP), without materialising the (HW)^2 matrix where a fused
    kernel exists. Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, reduction: int = 1) -> None:
        super().__init__()
        inner = max(channels // reduction, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.out = nn.Conv2d(inner, channels, 1)
        for conv in (self.g, self.theta, self.phi):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape

        def tokens(conv: nn.Conv2d) -> torch.Tensor:
            return conv(x).flatten(2).transpose(1, 2)[:, None]          # (B, 1, HW, C')

        y = F.scaled_dot_product_attention(tokens(self.theta), tokens(self.phi), tokens(self.g))
        y = y[:, 0].transpose(1, 2).reshape(b, -1, h, w)
        return x + self.out(y)


def resize_level(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Libra's resampling: adaptive max-pool down, nearest up. (B, C, h, w) -> (B, C, *size)."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return adaptive_pool(x, size, "max")
    return F.interpolate(x, size=size, mode="nearest")


class BalancedFeaturePyramid(nn.Module):
    """Integrate, refine, strengthen over ``num_levels`` levels of width ``channels``.

    Args:
        channels: width of every level (the FPN's).
        num_levels: pyramid levels (5 for P2-P6).
        refine_level: index of the level whose size the balanced feature takes (2: P4).
        refine: ``"non_local"`` (Libra's), ``"conv"`` (3x3 conv) or ``"none"``.

    Forward: list of (B, C, H_i, W_i) -> list of the same shapes.
    """

    def __init__(self, channels: int, num_levels: int = 5, refine_level: int = 2,
                 refine: Literal["non_local", "conv", "none"] = "non_local") -> None:
        super().__init__()
        if not 0 <= refine_level < num_levels:
            raise ValueError(f"bfp refine_level must index one of the {num_levels} levels, got {refine_level}")
        self.num_levels, self.refine_level = num_levels, refine_level
        if refine == "non_local":
            self.refine: nn.Module = NonLocal2d(channels)
        elif refine == "conv":
            self.refine = nn.Conv2d(channels, channels, 3, padding=1)
        elif refine == "none":
            self.refine = nn.Identity()
        else:
            raise ValueError(f"bfp refine must be 'non_local', 'conv' or 'none', got {refine!r}")

    def integrate(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        """The balanced semantic feature: the mean of all levels at the refine level's size."""
        size = levels[self.refine_level].shape[-2:]
        return torch.stack([resize_level(x, size) for x in levels]).mean(0)

    def forward(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(levels) != self.num_levels:
            raise ValueError(f"balanced feature pyramid built for {self.num_levels} levels, got {len(levels)}")
        bsf = self.refine(self.integrate(levels))
        return [x + resize_level(bsf, x.shape[-2:]) for x in levels]


__all__ = ["BalancedFeaturePyramid", "NonLocal2d", "resize_level"]
