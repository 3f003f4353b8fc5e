"""COCO panoptic PNG codec: segment id = R + 256*G + 256^2*B, 0 = VOID."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyspng
from PIL import Image, UnidentifiedImageError

from panoptix.data.errors import PanopticFormatError

# Modes whose pixels are (or decode losslessly to) RGB colours.
_RGB_MODES = {"RGB", "RGBA", "RGBX", "P", "PA"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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

    8-bit RGB, RGBA and palette PNGs (every COCO panoptic file) are decoded by libspng (pyspng),
    about twice as fast as Pillow; anything else goes through Pillow, which decodes or refuses it.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as err:
        raise PanopticFormatError(f"{path}: panoptic PNG not found") from err
    except OSError as err:
        raise PanopticFormatError(f"{path}: cannot read panoptic PNG ({err})") from err
    if data[:8] == _PNG_SIGNATURE and len(data) > 26 and data[24] == 8 and data[25] in (2, 3, 6):
        try:
            rgba = pyspng.load(data, format="RGBA")
        except Exception as err:  # libspng reports corrupt files with plain exceptions
            raise PanopticFormatError(f"{path}: cannot decode panoptic PNG ({err})") from err
        ids = rgba.view("<u4")[..., 0]
        ids &= 0xFFFFFF                        # drop alpha: what is left is R + 256 G + 256^2 B
        return ids.view(np.int32)
    return _read_id_png_pillow(path, data)


def _read_id_png_pillow(path: str | Path, data: bytes) -> np.ndarray:
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
