"""A 3x3 deformable convolution written with ``grid_sample`` and one matrix product.

torchvision's CPU kernel for ``deform_conv2d`` builds its column buffer element by element; on a CPU
this form (bilinear sampling of the nine shifted copies by ``grid_sample``, whose forward and backward
are vectorised, then a (C_out, 9 C_in) x (9 C_in, H W) product) is several times faster for the same
result (bench/deform_conv.py). On CUDA torchvision's kernel is kept: it needs no 9x column tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sampled_deform_conv3x3(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                           bias: torch.Tensor | None = None) -> torch.Tensor:
    """DCNv1 3x3 convolution, stride 1, padding 1, one offset group: torchvision's ``deform_conv2d``.

    Args:
        x: (B, C_in, H, W) input.
        offset: (B, 18, H, W) offsets in torchvision's layout: for kernel point k (row-major over the
            3x3 window) channel 2k is the y shift and 2k+1 the x shift, in pixels.
        weight: (C_out, C_in, 3, 3).
        bias: (C_out,) or None.
    Returns:
        (B, C_out, H, W). Samples outside the image read zero, as torchvision's bilinear sampling does.
    """
    b, c, h, w = x.shape
    if offset.shape != (b, 18, h, w):
        raise ValueError(f"offset must be (B, 18, H, W) = {(b, 18, h, w)}, got {tuple(offset.shape)}")
    kernel = torch.arange(-1.0, 2.0, device=x.device, dtype=x.dtype)
    ky, kx = torch.meshgrid(kernel, kernel, indexing="ij")
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, 1, h, 1)
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, 1, w)
    shifts = offset.view(b, 9, 2, h, w)
    py = ys + ky.reshape(1, 9, 1, 1) + shifts[:, :, 0]  # (B, 9, H, W) sample rows in pixels
    px = xs + kx.reshape(1, 9, 1, 1) + shifts[:, :, 1]
    # grid_sample's align_corners=False places pixel p at (2p + 1) / size - 1.
    grid = torch.stack([(2 * px + 1) / w - 1, (2 * py + 1) / h - 1], dim=-1).view(b, 9 * h, w, 2)
    columns = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = weight.reshape(weight.shape[0], c * 9) @ columns.view(b, c * 9, h * w)  # (B, C_out, H W)
    out = out.view(b, -1, h, w)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


__all__ = ["sampled_deform_conv3x3"]
