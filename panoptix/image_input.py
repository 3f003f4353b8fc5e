"""The one input contract of every entry point (`Predictor`, ``model(images)``, ensembles, TTA).

An image is one of:

- a NumPy array (H, W, 3), RGB: ``uint8`` in 0..255, or floating point in 0..1;
- a torch tensor (3, H, W), RGB: ``uint8`` in 0..255, or floating point in 0..1.

All four give the same (3, H, W) float32 tensor in 0..1, and so the same result. A floating-point
image with values outside 0..1 (beyond a 0.01 tolerance for rounding) is refused: it is either
0..255 or normalised, and which one cannot be told safely. Other layouts and dtypes are refused too.
Arrays are channels-last and tensors channels-first, as PIL/OpenCV and torchvision give them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from panoptix.errors import PanoptixError

# Floats may exceed 0..1 by this much (interpolation and dtype rounding), no more.
FLOAT_TOLERANCE = 0.01
_CONTRACT = "images are (H, W, 3) arrays or (3, H, W) tensors, uint8 in 0..255 or float in 0..1"


class ImageInputError(PanoptixError, ValueError):
    """An image outside the input contract (module docstring); the message names the image."""


def to_chw(image: np.ndarray | torch.Tensor, device: torch.device | str | None = None,
           index: int = 0) -> torch.Tensor:
    """One image -> (3, H, W) tensor on ``device``, its dtype kept (uint8 or float); layout and dtype
    checked, values not (see `to_unit_float`)."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            hint = " (a channels-first array: pass a tensor, or transpose it)" if image.ndim == 3 and \
                image.shape[0] == 3 else ""
            raise ImageInputError(f"image {index}: array of shape {image.shape}{hint}; {_CONTRACT}")
        _check_dtype(image.dtype == np.uint8 or np.issubdtype(image.dtype, np.floating), image.dtype, index)
        # a copy when read-only (decoded images may be): torch wants writable memory
        array = np.ascontiguousarray(image) if image.flags.writeable else np.array(image)
        tensor = torch.from_numpy(array).permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            hint = " (a channels-last tensor: permute(2, 0, 1) it)" if image.dim() == 3 and image.shape[2] == 3 else ""
            raise ImageInputError(f"image {index}: tensor of shape {tuple(image.shape)}{hint}; {_CONTRACT}")
        _check_dtype(image.dtype == torch.uint8 or image.is_floating_point(), image.dtype, index)
        tensor = image
    else:
        raise ImageInputError(f"image {index}: a {type(image).__name__}; {_CONTRACT}")
    return tensor.to(device, non_blocking=True) if device is not None else tensor


def _check_dtype(ok: bool, dtype: object, index: int) -> None:
    if not ok:
        raise ImageInputError(f"image {index}: dtype {dtype}; {_CONTRACT}")


def to_unit_float(images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """(3, H, W) uint8 or float tensors -> float32 in 0..1: uint8 divided by 255, floats checked.

    The floats' range is read in one device sync for the whole list (none when all are uint8).
    """
    floats = [i for i, im in enumerate(images) if im.is_floating_point()]
    if floats:
        bounds = torch.stack([torch.stack(torch.aminmax(images[i])).float() for i in floats]).cpu()
        for i, (lo, hi) in zip(floats, bounds.tolist()):
            if lo < -FLOAT_TOLERANCE or hi > 1 + FLOAT_TOLERANCE:
                kind = ", which looks normalised" if lo < -FLOAT_TOLERANCE else ", which looks like 0..255" \
                    if hi > 2 else ""
                raise ImageInputError(f"image {i}: float values span {lo:.3g}..{hi:.3g}{kind}; float images must "
                                      f"lie in 0..1 (divide by 255, undo a normalisation, clip, or pass uint8)")
    return [im.float() if im.is_floating_point() else im.float().div_(255.0) for im in images]


def as_image_tensors(images: Sequence[np.ndarray | torch.Tensor],
                     device: torch.device | str | None = None) -> list[torch.Tensor]:
    """A list of images in the contract -> (3, H, W) float32 tensors in 0..1 on ``device``."""
    if not isinstance(images, (list, tuple)) or not len(images):
        raise ImageInputError(f"expected a non-empty list of images; {_CONTRACT}")
    return to_unit_float([to_chw(im, device, i) for i, im in enumerate(images)])


__all__ = ["ImageInputError", "as_image_tensors", "to_chw", "to_unit_float", "FLOAT_TOLERANCE"]
