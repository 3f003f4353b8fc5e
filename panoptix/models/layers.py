"""Small building blocks shared by necks and heads."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import DeformConv2d


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with at most ``groups`` groups that divide ``channels`` (tiny models have few channels)."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels)


class DeformConv3x3(nn.Module):
    """3x3 deformable convolution (DCNv1) with learned offsets initialised to zero.

    At initialisation it computes exactly a plain 3x3 convolution; the offsets are learned.

    Shapes: (B, C_in, H, W) -> (B, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__()
        self.offset = nn.Conv2d(in_channels, 2 * 9, kernel_size=3, padding=1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.conv = DeformConv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=bias)
        nn.init.kaiming_uniform_(self.conv.weight, a=1)
        if bias:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torchvision's autocast rule for deform_conv2d runs it in float32 under AMP.
        return self.conv(x, self.offset(x))


class ConvGNReLU(nn.Sequential):
    """3x3 conv (plain or deformable) -> GroupNorm -> ReLU. (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, deformable: bool = False) -> None:
        conv = (DeformConv3x3(in_channels, out_channels, bias=False) if deformable
                else nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False))
        super().__init__(conv, group_norm(out_channels), nn.ReLU(inplace=True))


def coordinate_channels(x: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) normalised x and y coordinates in -1..1 for a (B, C, H, W) map (CoordConv)."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy]).unsqueeze(0).expand(b, -1, -1, -1)


class CoordConvGNReLU(ConvGNReLU):
    """`ConvGNReLU` whose convolution also sees two coordinate channels (CoordConv, Liu et al. 2018).

    Shapes: (B, C_in, H, W) -> (B, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels + 2, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.cat([x, coordinate_channels(x)], dim=1))
