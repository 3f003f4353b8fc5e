"""COCO panoptic PNG codec: segment id = R + 256*G + 256^2*B, 0 = VOID."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyspng

from panoptix.data.errors import PanopticFormatError

# Modes whose pixels are (or decode losslessly to) RGB colours.
_RGB_MODES = {"RGB", "RGBA", "RGBX", "P", "PA"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 (or int) RGB -> HxW int32 ids."""
    rgb = np.asarray(rgb)
    if rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.size:
        return _packed_rgb_to_ids(np.ascontiguousarray(rgb))
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]).astype(np.int32)


def _packed_rgb_to_ids(rgb: np.ndarray) -> np.ndarray:
    """C-contiguous (H, W, 3) uint8 -> (H, W) int32 ids, in two passes over the pixels.

    Pixel i's bytes start at 3i, so a little-endian uint32 read there is R + 256 G + 256^2 B plus
    the next pixel's R in the top byte: an unaligned, 3-byte-strided uint32 view of the buffer,
    copied out and masked, is the id map. The last pixel has no byte after it and is done apart.
    """
    h, w = rgb.shape[:2]
    n = h * w
    flat = rgb.reshape(-1)
    out = np.empty(n, dtype=np.uint32)
    out[:-1] = np.ndarray((n - 1,), dtype="<u4", buffer=flat, strides=(3,))
    out &= 0xFFFFFF
    out[-1] = int(flat[-3]) | int(flat[-2]) << 8 | int(flat[-1]) << 16
    return out.view(np.int32).reshape(h, w)


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

    8-bit RGB and RGBA PNGs and palette PNGs (every COCO panoptic file) are decoded by libspng
    (pyspng) straight to packed RGB, the fastest decoder that installs from a wheel (see
    bench/README.md); anything else goes through Pillow, which decodes or refuses it.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as err:
        raise PanopticFormatError(f"{path}: panoptic PNG not found") from err
    except OSError as err:
        raise PanopticFormatError(f"{path}: cannot read panoptic PNG ({err})") from err
    if _libspng_decodes(data):
        try:
            rgb = pyspng.load(data, format="RGB")
        except Exception as err:  # libspng reports corrupt files with plain exceptions
            raise PanopticFormatError(f"{path}: cannot decode panoptic PNG ({err})") from err
        return _packed_rgb_to_ids(rgb)
    return _read_id_png_pillow(path, data)


def _libspng_decodes(data: bytes) -> bool:
    """An 8-bit RGB/RGBA or a palette PNG (the IHDR's bit depth and colour type bytes)."""
    if data[:8] != _PNG_SIGNATURE or len(data) <= 26:
        return False
    depth, colour = data[24], data[25]
    return (depth == 8 and colour in (2, 6)) or colour == 3


def _read_id_png_pillow(path: str | Path, data: bytes) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            mode = img.mode
            rgb = np.asarray(img.convert("RGB")) if mode in _RGB_MODES else None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise PanopticFormatError(f"{path}: cannot decode panoptic PNG ({err})") from err
    if rgb is None:
        raise PanopticFormatError(f"{path}: panoptic PNG has mode {mode!r}; expected RGB (or palette/RGBA) "
                                  "with id = R + 256*G + 256^2*B")
    return rgb2id(rgb)


def write_id_png(path: str | Path, ids: np.ndarray) -> None:
    """Write an HxW id map as a COCO panoptic RGB PNG."""
    from PIL import Image

    Image.fromarray(id2rgb(ids), mode="RGB").save(path, compress_level=1)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, with a clear error when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError as err:
        raise PanopticFormatError(f"{path}: image not found") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise PanopticFormatError(f"{path}: cannot decode image ({err})") from err
