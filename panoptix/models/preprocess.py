"""Input side of every system: check, normalise, resize at test time, pad into one `ImageList`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.image_list import ImageList

from panoptix.data.meta import IGNORE_INDEX
from panoptix.errors import ExportError
from panoptix.image_input import as_image_tensors
from panoptix.registry import Configurable

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

def check_images(images: Sequence[torch.Tensor]) -> None:
    """Refuse anything but a non-empty list of (3, H, W) float tensors."""
    if not isinstance(images, (list, tuple)) or not images:
        raise ValueError("images must be a non-empty list of (3, H, W) float tensors in 0..1")
    for i, im in enumerate(images):
        if im.dim() != 3 or im.shape[0] != 3 or not im.is_floating_point():
            raise ValueError(f"image {i}: expected a (3, H, W) float tensor in 0..1, got {tuple(im.shape)} {im.dtype}")

def check_targets(images: Sequence[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]] | None) -> None:
    """Training needs one target dict per image, its ``semantic`` map the size of the image."""
    if targets is None or len(targets) != len(images):
        raise ValueError("training needs one target dict per image")
    for i, (im, t) in enumerate(zip(images, targets)):
        if "semantic" in t and tuple(t["semantic"].shape) != tuple(im.shape[-2:]):
            raise ValueError(f"image {i}: semantic target {tuple(t['semantic'].shape)} does not match the "
                             f"image size {tuple(im.shape[-2:])}")


def inference_size(h: int, w: int, min_size: int, max_size: int) -> tuple[int, int]:
    """Short side to ``min_size`` with the long side capped at ``max_size``; ``min_size=0`` keeps (h, w)."""
    if not min_size:
        return h, w
    scale = min(min_size / min(h, w), max_size / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))

def export_size(preprocess: Preprocessor, size: Sequence[int]) -> tuple[int, int]:
    """``size`` (H, W) as ints for an exported graph, refused in one line when ``preprocess`` would
    resize an image of that size (the graph takes images at the size it runs them)."""
    size = (int(size[0]), int(size[1]))
    resized = inference_size(*size, preprocess.min_size_test, preprocess.max_size_test)
    if resized != size:
        raise ExportError(f"the model resizes a {size[0]}x{size[1]} image to {resized[0]}x{resized[1]} "
                          f"(model.preprocess.min_size_test={preprocess.min_size_test}); export at --size "
                          f"{resized[0]} {resized[1]} and resize images to it, or pass "
                          f"model.preprocess.min_size_test=0")
    return size

def padded_size(sizes: Sequence[tuple[int, int]], divisibility: int) -> tuple[int, int]:
    d = max(1, divisibility)
    return -(-max(s[0] for s in sizes) // d) * d, -(-max(s[1] for s in sizes) // d) * d

def pad_maps(maps: Sequence[torch.Tensor], size: tuple[int, int], fill: int = IGNORE_INDEX) -> torch.Tensor:
    """(H_i, W_i) label maps -> (B, *size) int64, padded with ``fill`` (VOID for semantic targets)."""
    out = torch.full((len(maps), *size), fill, dtype=torch.int64, device=maps[0].device)
    for b, m in zip(out, maps):
        b[: m.shape[0], : m.shape[1]] = m
    return out

def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) -> (3, *size), bilinear with antialias (unchanged when the size is the same)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True)[0]


class Preprocessor(Configurable, nn.Module):
    """Normalise 0..1 RGB, resize at inference (bilinear with antialias), pad to the divisibility.

    Args:
        pixel_mean, pixel_std: normalisation of 0..1 RGB (ImageNet's by default).
        min_size_test, max_size_test: inference resize (short side, cap on the long side), 800/1333
            as in detectron2; ``min_size_test=0`` keeps the input size. Training images arrive
            already resized by the data transforms.
        size_divisibility: the padded batch is a multiple of this (32 for a P2-P5 FPN; the P6
            anchors keep stride 64 whatever it is, see `panoptix.models.heads.rcnn`).

    The systems call `inputs` first, which brings any image of the input contract to float 0..1.

    Forward: list of (3, H_i, W_i) float -> `ImageList` with tensors (B, 3, H_pad, W_pad) and the
    per-image (h, w) inside the padding.
    """

    def __init__(self, pixel_mean: Sequence[float] = IMAGENET_MEAN, pixel_std: Sequence[float] = IMAGENET_STD,
                 min_size_test: int = 800, max_size_test: int = 1333, size_divisibility: int = 32) -> None:
        super().__init__()
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), persistent=False)
        self.min_size_test, self.max_size_test = min_size_test, max_size_test
        self.size_divisibility = size_divisibility

    def inputs(self, images: Sequence[Any]) -> list[torch.Tensor]:
        """Images in the input contract (`panoptix.image_input`: (H, W, 3) arrays or (3, H, W) tensors,
        uint8 or float in 0..1) -> (3, H, W) float32 tensors in 0..1 on this module's device."""
        return as_image_tensors(images, self.pixel_mean.device)

    def test_size(self, h: int, w: int) -> tuple[int, int]:
        """The size an (h, w) image is resized to at inference."""
        return inference_size(h, w, self.min_size_test, self.max_size_test)

    def forward(self, images: Sequence[torch.Tensor]) -> ImageList:
        check_images(images)
        if not self.training:
            # ints: an exported graph has a fixed size, and the tracer's shape values are tensors
            images = [resize_image(im, self.test_size(int(im.shape[-2]), int(im.shape[-1]))) for im in images]
        return self.batch(images)

    def batch(self, images: Sequence[torch.Tensor]) -> ImageList:
        """Normalise and pad images as they are (no resize): (3, H_i, W_i) -> `ImageList`."""
        # ints: an exported graph has a fixed size, and traced shape arithmetic would round the padding
        # toward zero (ONNX integer division), not up
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        normed = [(im - self.pixel_mean) / self.pixel_std for im in images]
        hp, wp = padded_size(sizes, self.size_divisibility)
        # F.pad, not a copy into a slice of a zero batch: the legacy ONNX tracer loses in-place copies
        # into views, and the exported graph would not depend on its input
        batch = torch.stack([F.pad(im, (0, wp - im.shape[2], 0, hp - im.shape[1])) for im in normed])
        return ImageList(batch, sizes)

__all__ = ["Preprocessor", "export_size", "resize_image", "check_images", "pad_maps", "padded_size", "inference_size",
           "IMAGENET_MEAN", "IMAGENET_STD"]
