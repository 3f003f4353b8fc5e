"""Which pixels lie inside which boxes (UPSNet's box-limited terms, and their fixed-shape form)."""

from __future__ import annotations

import torch


def box_mask(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 4) xyxy boxes -> (N, H, W) bool, True where the pixel centre lies inside the box."""
    ys = torch.arange(size[0], device=boxes.device, dtype=torch.float32) + 0.5
    xs = torch.arange(size[1], device=boxes.device, dtype=torch.float32) + 0.5
    b = boxes.float()
    inside_y = (ys[None] >= b[:, 1, None]) & (ys[None] <= b[:, 3, None])
    inside_x = (xs[None] >= b[:, 0, None]) & (xs[None] <= b[:, 2, None])
    return inside_y[:, :, None] & inside_x[:, None, :]


__all__ = ["box_mask"]
