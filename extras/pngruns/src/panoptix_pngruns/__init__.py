"""Pixel counts of the (gt id, pred id) pairs of two COCO panoptic PNGs, without decoding either to an image.

``pair_counts(gt_png, pred_png)`` gives each distinct (gt id, pred id) pixel pair of the two images
once, with its pixel count: the intersection counts that ``panoptix.evaluation.pq_core`` builds from
``pair_runs(read_id_png(gt), read_id_png(pred))``, about twice as fast. libdeflate (the ``deflate``
wheel) inflates the IDAT stream, and a small C loop undoes the row filters and counts the pairs run
by run (see ``_pngruns.c``).

It takes only what it can decode exactly: non-interlaced 8-bit RGB, RGBA and palette PNGs whose
IHDR, PLTE and IDAT checksums hold, whose zlib stream inflates to exactly the expected size, and of
the same width and height. For anything else it returns None, and the caller decodes the slow way,
which also reports what is wrong with the file.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

import deflate
import numpy as np

from panoptix_pngruns._pngruns import pair_counts as _pair_counts

__all__ = ["pair_counts", "scanlines"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {2: 3, 6: 4, 3: 1}       # PNG colour type -> bytes per pixel at bit depth 8
_NO_PALETTE = b""
_MISSING = 0xFFFFFFFF                # palette slots the PLTE chunk does not fill
_MAX_RATIO = 1032                    # deflate's largest expansion (258-byte matches in about 2 bits)


class _Image(NamedTuple):
    """One PNG's inflated scanlines: ``raw`` (h rows of 1 + w * channels bytes) and its palette."""

    width: int
    height: int
    channels: int
    raw: bytes
    palette: bytes


def _chunks(data: bytes):
    """(type, payload) of each chunk; it stops at a length past the end, and yields (None, b"") for a
    critical chunk whose checksum is wrong."""
    pos, n = 8, len(data)
    while pos + 12 <= n:
        length = int.from_bytes(data[pos:pos + 4], "big")
        end = pos + 12 + length
        if end > n:
            return
        kind = data[pos + 4:pos + 8]
        if kind[0] < 0x61 and zlib.crc32(data[pos + 4:pos + 8 + length]) != int.from_bytes(data[end - 4:end], "big"):
            yield None, b""                                # a critical chunk (upper-case) with a bad CRC
            return
        yield kind, data[pos + 8:pos + 8 + length]
        if kind == b"IEND":
            return
        pos = end


def _palette_ids(plte: bytes) -> bytes | None:
    """PLTE's RGB triples -> 256 uint32 ids (missing entries marked), or None when malformed."""
    if not plte or len(plte) % 3 or len(plte) > 768:
        return None
    rgb = np.frombuffer(plte, np.uint8).reshape(-1, 3).astype(np.uint32)
    ids = np.full(256, _MISSING, np.uint32)
    ids[:len(rgb)] = rgb[:, 0] | rgb[:, 1] << 8 | rgb[:, 2] << 16
    return ids.tobytes()


def scanlines(data: bytes) -> _Image | None:
    """A PNG file's bytes -> its inflated scanlines, or None when this module does not take it."""
    if data[:8] != _SIGNATURE or len(data) < 33 or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", data[16:29])
    channels = _CHANNELS.get(colour)
    if depth != 8 or channels is None or compression or filtering or interlace or not width or not height:
        return None
    idat, palette, ended, after_idat = [], _NO_PALETTE, False, False
    for kind, payload in _chunks(data):
        if kind is None:
            return None
        if kind == b"IDAT":
            if after_idat:                                 # IDAT chunks must be consecutive
                return None
            idat.append(payload)
            continue
        after_idat = bool(idat)
        if kind == b"PLTE":
            palette = _palette_ids(payload)
            if palette is None:
                return None
        elif kind == b"IEND":
            ended = True
    size = height * (width * channels + 1)
    if not ended or not idat or (channels == 1 and not palette):
        return None
    stream = b"".join(idat)
    if size > _MAX_RATIO * len(stream) + 1024:         # more than deflate can expand to: refuse the size
        return None
    try:
        raw = deflate.zlib_decompress(stream, size)
    except deflate.DeflateError:
        return None
    if len(raw) != size:
        return None
    return _Image(width, height, channels, raw, palette if channels == 1 else _NO_PALETTE)


def pair_counts(gt_png: bytes, pred_png: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The distinct (gt id, pred id) pixel pairs of two PNG files' bytes and their pixel counts.

    Returns (K,) int32 gt ids, (K,) int32 pred ids and (K,) int64 pixel counts, each pair once in
    order of first appearance in raster order, or None when either PNG
    is one this module does not take (see the module docstring), the two differ in size, a row has
    an unknown filter type or a palette index has no PLTE entry.
    """
    gt, pred = scanlines(gt_png), scanlines(pred_png)
    if gt is None or pred is None or (gt.width, gt.height) != (pred.width, pred.height):
        return None
    try:
        g, p, n = _pair_counts(gt.raw, gt.channels, gt.palette, pred.raw, pred.channels, pred.palette,
                               gt.width, gt.height)
    except ValueError:
        return None
    g, p = np.frombuffer(g, np.uint32), np.frombuffer(p, np.uint32)
    if (gt.channels == 1 and (g == _MISSING).any()) or (pred.channels == 1 and (p == _MISSING).any()):
        return None
    return g.view(np.int32), p.view(np.int32), np.frombuffer(n, np.int64)
