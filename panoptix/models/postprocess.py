"""Output side of every system: boxes, masks and semantic logits back to the input image size."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from panoptix.structures import Instances

# Elements of the sampling grid per chunk of pasted masks (2 floats per pixel per mask): bounds the
# memory of `paste_masks` to ~256 MB whatever the instance count and image size.
_PASTE_BUDGET = 1 << 25


def resize_boxes(boxes: torch.Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> torch.Tensor:
    """(N, 4) xyxy boxes in an image of ``from_size`` (h, w) -> the same boxes in ``to_size``, float32."""
    sy, sx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return boxes.float() * boxes.new_tensor([sx, sy, sx, sy], dtype=torch.float32)


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Paste box-relative masks into the image, all at once (detectron2's grid-sample paste).

    Each output pixel centre is mapped into its instance's box and the (M, M) mask is sampled
    bilinearly there; pixels outside the box get 0. One ``grid_sample`` per chunk of instances
    (chunks only bound memory; there is no per-instance loop and no host sync).

    Args:
        masks: (N, M, M) or (N, 1, M, M) probabilities (or logits).
        boxes: (N, 4) xyxy in output pixels.
        size: (H, W) of the output.

    Returns:
        (N, H, W) float32.
    """
    if masks.dim() == 4:
        masks = masks[:, 0]
    n = masks.shape[0]
    h, w = size
    if n == 0:
        return masks.new_zeros((0, h, w), dtype=torch.float32)
    boxes = boxes.float()
    x0, y0, x1, y1 = boxes.unbind(1)
    ys = torch.arange(h, device=boxes.device, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=boxes.device, dtype=torch.float32) + 0.5
    gy = (ys[None] - y0[:, None]) / (y1 - y0).clamp(min=1e-4)[:, None] * 2 - 1  # (N, H)
    gx = (xs[None] - x0[:, None]) / (x1 - x0).clamp(min=1e-4)[:, None] * 2 - 1  # (N, W)
    step = max(1, _PASTE_BUDGET // (2 * h * w))
    out = []
    for i in range(0, n, step):
        k = min(step, n - i)
        grid = torch.stack([gx[i:i + k, None, :].expand(k, h, w), gy[i:i + k, :, None].expand(k, h, w)], dim=3)
        out.append(F.grid_sample(masks[i:i + k, None].float(), grid, mode="bilinear", padding_mode="zeros",
                                 align_corners=False)[:, 0])
    return out[0] if len(out) == 1 else torch.cat(out)


def resize_semantic_logits(logits: torch.Tensor, crop: tuple[int, int], size: tuple[int, int],
                           stride: int = 4) -> torch.Tensor:
    """Logits of one padded image at 1/``stride`` scale -> logits at the original image size.

    Args:
        logits: (K, H'/s, W'/s) head output for one image of the padded batch.
        crop: (height, width) of the resized image inside the padded batch (stride 1).
        size: (height, width) of the original image.

    Returns:
        (K, *size) float32 logits.
    """
    full = F.interpolate(logits[None].float(), scale_factor=float(stride), mode="bilinear", align_corners=False)
    full = full[..., : crop[0], : crop[1]]
    return F.interpolate(full, size=size, mode="bilinear", align_corners=False)[0]


def detector_postprocess(instances: Instances, size: tuple[int, int], min_score: float = 0.0) -> Instances:
    """Instances of a resized image -> instances at the input ``size`` with full-size masks.

    Instances under ``min_score`` are dropped before their masks are pasted (the merge would drop
    them anyway); boxes are rescaled from ``instances.image_size``.

    Returns:
        `Instances` with boxes (N, 4) float32, masks (N, H, W) float32 probabilities, image_size=size.
    """
    if min_score > 0:
        instances = instances[instances.scores >= min_score]
    boxes = resize_boxes(instances.boxes, instances.image_size, size)
    masks = paste_masks(instances.masks, boxes, size) if instances.masks is not None else None
    return instances.replace(boxes=boxes, masks=masks, image_size=tuple(size))


__all__ = ["resize_boxes", "paste_masks", "resize_semantic_logits", "detector_postprocess"]
