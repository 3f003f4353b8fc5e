"""COCO panoptic PNG codec: segment id = R + 256*G + 256^2*B, 0 = VOID."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from panoptix.data.errors import PanopticFormatError

# Modes whose pixels are (or decode losslessly to) RGB colours.
_RGB_MODES = {"RGB", "RGBA", "RGBX", "P", "PA"}


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 (or int) RGB -> HxW int32 ids."""
    rgb = np.asarray(rgb)
    if rgb.dtype == np.uint8:
        # View RGB triplets padded to 4 bytes as one little-endian uint32: one pass, no multiplies.
        h, w = rgb.shape[:2]
        buf = np.zeros((h, w, 4), dtype=np.uint8)
        buf[..., :3] = rgb[..., :3]
        return buf.view("<u4")[..., 0].astype(np.int32, copy=False)
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]).astype(np.int32)


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """HxW integer ids (0 <= id < 2^24) -> HxWx3 uint8 RGB."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= 1 << 24):
        raise ValueError(f"segment ids must lie in [0, 2^24), got [{ids.min()}, {ids.max()}]")
    le = np.ascontiguousarray(ids, dtype="<u4")
    return le.view(np.uint8).reshape(*ids.shape, 4)[..., :3].copy()


def read_id_png(path: str | Path) -> np.ndarray:
    """Read a COCO panoptic PNG to an HxW int32 id map.

    Palette and RGBA PNGs are decoded to RGB first (alpha is dropped). Files that are not
    RGB-encodable images raise `PanopticFormatError` naming the file.
    """
    try:
        with Image.open(path) as img:
            if img.mode not in _RGB_MODES:
                raise PanopticFormatError(
                    f"{path}: panoptic PNG has mode {img.mode!r}; expected RGB (or palette/RGBA) "
                    "with id = R + 256*G + 256^2*B")
            if img.mode in ("P", "PA"):
                img = img.convert("RGB")
            # RGBA with alpha 0 viewed as one little-endian uint32 is exactly R + 256 G + 256^2 B.
            img.putalpha(0)
            rgba = np.asarray(img)
    except FileNotFoundError as err:
        raise PanopticFormatError(f"{path}: panoptic PNG not found") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise PanopticFormatError(f"{path}: cannot decode panoptic PNG ({err})") from err
    return rgba.view("<u4")[..., 0].view(np.int32)


def write_id_png(path: str | Path, ids: np.ndarray) -> None:
    """Write an HxW id map as a COCO panoptic RGB PNG."""
    Image.fromarray(id2rgb(ids), mode="RGB").save(path, compress_level=1)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, with a clear error when it cannot be read."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError as err:
        raise PanopticFormatError(f"{path}: image not found") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise PanopticFormatError(f"{path}: cannot decode image ({err})") from err
