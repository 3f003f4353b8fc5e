"""Small building blocks shared by necks and heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import DeformConv2d

from panoptix.models.sampled_deform_conv import sampled_deform_conv3x3

DEFORM_IMPLS = ("auto", "torchvision", "sampled")


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with at most ``groups`` groups that divide ``channels`` (tiny models have few channels)."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels)


def adaptive_pool(x: torch.Tensor, size: tuple[int, int], mode: str = "avg") -> torch.Tensor:
    """Adaptive ``"avg"`` or ``"max"`` pooling of (B, C, H, W) to ``size``: a fixed-kernel pool when the
    bins are whole (the same numbers; it exports to ONNX where the tracer does not know the input's
    shape, which adaptive pooling needs), else the adaptive one."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h % size[0] == 0 and w % size[1] == 0:
        kernel = (h // size[0], w // size[1])
        return F.avg_pool2d(x, kernel) if mode == "avg" else F.max_pool2d(x, kernel)
    return F.adaptive_avg_pool2d(x, size) if mode == "avg" else F.adaptive_max_pool2d(x, size)


class DeformConv3x3(nn.Module):
    """3x3 deformable convolution (DCNv1) with learned offsets initialised to zero.

    At initialisation it computes exactly a plain 3x3 convolution; the offsets are learned.

    ``impl`` picks the kernel, not the result: "torchvision" (``torchvision.ops.deform_conv2d``),
    "sampled" (`sampled_deform_conv3x3`, several times faster on a CPU) or "auto" (sampled on the CPU,
    torchvision elsewhere). The parameters are the same either way, so checkpoints move between them.

    Shapes: (B, C_in, H, W) -> (B, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, impl: str = "auto") -> None:
        super().__init__()
        if impl not in DEFORM_IMPLS:
            raise ValueError(f"deformable conv impl must be one of {DEFORM_IMPLS}, got {impl!r}")
        self.impl = impl
        self.offset = nn.Conv2d(in_channels, 2 * 9, kernel_size=3, padding=1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.conv = DeformConv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=bias)
        nn.init.kaiming_uniform_(self.conv.weight, a=1)
        if bias:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.offset(x)
        if self.impl == "torchvision" or (self.impl == "auto" and x.device.type != "cpu"):
            # torchvision's autocast rule for deform_conv2d runs it in float32 under AMP.
            return self.conv(x, offset)
        with torch.autocast(x.device.type, enabled=False):  # sampling positions need float32
            bias = None if self.conv.bias is None else self.conv.bias.float()
            out = sampled_deform_conv3x3(x.float(), offset.float(), self.conv.weight.float(), bias)
        return out.to(x.dtype)


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
