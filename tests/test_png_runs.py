"""The optional compiled PNG path (extras/pngruns) against decoding with libspng: the same pixel-pair
counts to the bit for every PNG filter type and colour type, None for every file it must not take, and the same
evaluation, errors included. `make test` installs the extra where a C compiler exists; without it
these tests skip and say so."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from panoptix.data.png import read_id_png, write_id_png
from panoptix.evaluation import png_runs
from panoptix.evaluation.panoptic import evaluate_coco_panoptic
from panoptix.evaluation.pq_core import pair_runs

from conftest import perturbed

pngruns = pytest.importorskip("panoptix_pngruns", reason="the compiled extra is not installed "
                                                         "(pip install ./extras/pngruns; needs a C compiler)")


# --------------------------------------------------------------------------- a PNG writer with chosen filters
def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def filtered_rows(pixels: np.ndarray, filters: np.ndarray) -> bytes:
    """(H, W, C) uint8 -> the PNG scanlines with row y filtered by filters[y] (0-4), vectorised:
    each predictor reads the unfiltered neighbours, which the encoder has."""
    h, w, ch = pixels.shape
    x = pixels.reshape(h, w * ch).astype(np.int32)
    left = np.zeros_like(x)
    left[:, ch:] = x[:, :-ch]
    up = np.zeros_like(x)
    up[1:] = x[:-1]
    up_left = np.zeros_like(x)
    up_left[1:, ch:] = x[:-1, :-ch]
    predictors = [np.zeros_like(x), left, up, (left + up) // 2, _paeth(left, up, up_left)]
    pred = np.choose(filters[:, None].repeat(w * ch, axis=1), predictors)
    rows = ((x - pred) % 256).astype(np.uint8)
    return np.concatenate([filters[:, None].astype(np.uint8), rows], axis=1).tobytes()


def png_bytes(pixels: np.ndarray, filters: np.ndarray, colour: int, palette: np.ndarray | None = None,
              depth: int = 8, interlace: int = 0, idat_parts: int = 1) -> bytes:
    """A PNG of (H, W, C) pixels with the given row filters; colour 2 RGB, 6 RGBA, 3 palette (C = 1)."""
    h, w = pixels.shape[:2]
    scanlines = bytearray(filtered_rows(pixels, np.minimum(filters, 4)))
    scanlines[::len(scanlines) // h] = bytes(filters.astype(np.uint8))      # filter type bytes, as given
    stream = zlib.compress(bytes(scanlines), 6)
    cut = np.linspace(0, len(stream), idat_parts + 1).astype(int)
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, interlace))
    if palette is not None:
        out += _chunk(b"PLTE", palette.astype(np.uint8).tobytes())
    out += b"".join(_chunk(b"IDAT", stream[a:b]) for a, b in zip(cut[:-1], cut[1:]))
    return out + _chunk(b"IEND", b"")


def segment_ids(rng: np.random.Generator, h: int, w: int, n: int) -> np.ndarray:
    """(H, W) piecewise-constant ids of n random rectangles over a background, ids up to 2^24 - 1."""
    ids = np.full((h, w), rng.integers(1, 1 << 24), np.int64)
    for value in rng.integers(0, 1 << 24, n):
        y, x = rng.integers(0, h), rng.integers(0, w)
        ids[y:y + rng.integers(1, h), x:x + rng.integers(1, w)] = value
    return ids


def rgb(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids & 255, ids >> 8 & 255, ids >> 16 & 255], -1).astype(np.uint8)


def reference_counts(tmp_path: Path, gt: bytes, pred: bytes):
    """libspng decodes both files, `pair_runs` finds the runs, and numpy sums them per distinct pair,
    in order of first appearance."""
    (tmp_path / "gt.png").write_bytes(gt)
    (tmp_path / "pred.png").write_bytes(pred)
    g, p, n = pair_runs(read_id_png(tmp_path / "gt.png"), read_id_png(tmp_path / "pred.png"))
    key = g.astype(np.int64) << 32 | p.astype(np.int64)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    order = np.argsort(first)
    pixels = np.bincount(inverse, weights=n).astype(np.int64)
    return g[first[order]], p[first[order]], pixels[order]


def assert_same_counts(got, want) -> None:
    assert got is not None
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
        assert g.dtype == w.dtype


# --------------------------------------------------------------------------- same runs as libspng
@pytest.mark.parametrize("filter_type", [0, 1, 2, 3, 4, "mixed"])
@pytest.mark.parametrize("noise", [False, True])
def test_every_filter_gives_libspng_runs(tmp_path, filter_type, noise):
    rng = np.random.default_rng(7)
    h, w = 37, 53                                         # odd sizes: no row is a multiple of 8 pixels
    gt_ids, pred_ids = segment_ids(rng, h, w, 12), segment_ids(rng, h, w, 9)
    if noise:                                             # every Paeth branch, not only flat stretches
        gt_ids = np.where(rng.random((h, w)) < 0.3, rng.integers(0, 1 << 24, (h, w)), gt_ids)
    filters = rng.integers(0, 5, h) if filter_type == "mixed" else np.full(h, filter_type)
    gt, pred = png_bytes(rgb(gt_ids), filters, 2), png_bytes(rgb(pred_ids), filters[::-1].copy(), 2)
    assert_same_counts(pngruns.pair_counts(gt, pred), reference_counts(tmp_path, gt, pred))


def test_rgba_palette_and_mixed_colour_types(tmp_path):
    rng = np.random.default_rng(3)
    h, w = 40, 64
    ids = segment_ids(rng, h, w, 8)
    values, index = np.unique(ids, return_inverse=True)
    filters = rng.integers(0, 5, h)
    alpha = rng.integers(0, 256, (h, w, 1)).astype(np.uint8)          # alpha is ignored
    rgba = png_bytes(np.concatenate([rgb(ids), alpha], -1), filters, 6)
    pal = png_bytes(index.reshape(h, w, 1).astype(np.uint8), filters, 3, palette=rgb(values).reshape(-1, 3))
    plain = png_bytes(rgb(segment_ids(rng, h, w, 5)), filters, 2)
    for gt, pred in [(rgba, plain), (plain, rgba), (pal, plain), (plain, pal), (pal, rgba), (rgba, rgba)]:
        assert_same_counts(pngruns.pair_counts(gt, pred), reference_counts(tmp_path, gt, pred))


def test_pillow_written_pngs_split_idat(tmp_path):
    """Files as users write them (Pillow's adaptive filters) and an IDAT stream split in chunks."""
    rng = np.random.default_rng(5)
    gt_ids, pred_ids = segment_ids(rng, 96, 128, 20), segment_ids(rng, 96, 128, 20)
    write_id_png(tmp_path / "a.png", gt_ids)
    Image.fromarray(rgb(pred_ids)).save(tmp_path / "b.png", compress_level=9)
    gt, pred = (tmp_path / "a.png").read_bytes(), (tmp_path / "b.png").read_bytes()
    assert_same_counts(pngruns.pair_counts(gt, pred), reference_counts(tmp_path, gt, pred))
    split = png_bytes(rgb(gt_ids), rng.integers(0, 5, 96), 2, idat_parts=4)
    assert_same_counts(pngruns.pair_counts(split, pred), reference_counts(tmp_path, split, pred))


# --------------------------------------------------------------------------- what it must not take
@pytest.mark.parametrize("case", ["crc", "truncated", "interlaced", "16-bit", "filter 5", "size", "palette index",
                                  "split IDAT", "not png", "bomb"])
def test_refuses_what_it_cannot_decode_exactly(case):
    rng = np.random.default_rng(1)
    ids = segment_ids(rng, 16, 24, 4)
    good = png_bytes(rgb(ids), np.full(16, 4), 2)
    bad = {
        "crc": lambda: _flip(good, good.index(b"IEND") - 5),            # the IDAT's checksum, stream intact
        "truncated": lambda: good[:-30],
        "interlaced": lambda: png_bytes(rgb(ids), np.full(16, 4), 2, interlace=1),
        "16-bit": lambda: png_bytes(rgb(ids), np.full(16, 4), 2, depth=16),
        "filter 5": lambda: png_bytes(rgb(ids), np.full(16, 5), 2),
        "size": lambda: png_bytes(rgb(ids)[:15], np.full(15, 0), 2),
        "palette index": lambda: png_bytes(np.full((16, 24, 1), 3, np.uint8), np.zeros(16, int), 3,
                                           palette=np.zeros((2, 3))),
        "split IDAT": lambda: _split_idat_around_text(good),
        "not png": lambda: b"GIF89a" + good[6:],
        "bomb": lambda: good[:16] + struct.pack(">II", 1 << 20, 1 << 20) + good[24:],
    }[case]()
    assert pngruns.pair_counts(bad, good) is None
    assert pngruns.pair_counts(good, bad) is None
    assert pngruns.pair_counts(good, good) is not None


def _flip(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 1]) + data[i + 1:]


def _split_idat_around_text(data: bytes) -> bytes:
    """The file's IDAT stream in two chunks with a tEXt chunk between them (the spec forbids it)."""
    start = data.index(b"IDAT") - 4
    length = int.from_bytes(data[start:start + 4], "big")
    stream, tail = data[start + 8:start + 8 + length], data[start + 12 + length:]
    half = len(stream) // 2
    return (data[:start] + _chunk(b"IDAT", stream[:half]) + _chunk(b"tEXt", b"k\x00v")
            + _chunk(b"IDAT", stream[half:]) + tail)


# --------------------------------------------------------------------------- the evaluation, with and without
def test_evaluation_is_the_same_without_the_compiled_path(synth_val, tmp_path, monkeypatch):
    pred_json, pred_dir = perturbed(tmp_path, synth_val["gt_json"], synth_val["gt_dir"], seed=4)
    fast = evaluate_coco_panoptic(synth_val["gt_json"], pred_json, synth_val["gt_dir"], pred_dir)
    calls, original = [], pngruns.pair_counts
    monkeypatch.setattr(pngruns, "pair_counts", lambda *a: calls.append(1) or original(*a))
    assert evaluate_coco_panoptic(synth_val["gt_json"], pred_json, synth_val["gt_dir"], pred_dir) == fast
    assert len(calls) == fast["num_images"]                           # every image took the compiled path
    monkeypatch.setattr(png_runs, "panoptix_pngruns", None)
    assert evaluate_coco_panoptic(synth_val["gt_json"], pred_json, synth_val["gt_dir"], pred_dir) == fast


def test_a_file_it_refuses_is_reported_by_the_decoder(synth_val, tmp_path):
    from panoptix.evaluation.findings import PanopticInputError

    pred_json, pred_dir = perturbed(tmp_path, synth_val["gt_json"], synth_val["gt_dir"], seed=2)
    first = json.loads(pred_json.read_text())["annotations"][0]["file_name"]
    png = pred_dir / first
    png.write_bytes(png.read_bytes()[:-40])                            # truncated: refused, then decoded
    with pytest.raises(PanopticInputError, match=first):
        evaluate_coco_panoptic(synth_val["gt_json"], pred_json, synth_val["gt_dir"], pred_dir)


def test_evaluate_says_which_png_path_it_took(synth_val, tmp_path, monkeypatch, capsys):
    from panoptix.cli import main

    pred_json, pred_dir = perturbed(tmp_path, synth_val["gt_json"], synth_val["gt_dir"], seed=2)
    args = ["evaluate", "--gt-json", str(synth_val["gt_json"]), "--pred-json", str(pred_json),
            "--pred-dir", str(pred_dir), "--out", str(tmp_path / "r.json")]
    assert main(args) == 0
    assert "(compiled PNG path)" in capsys.readouterr().out
    monkeypatch.setattr(png_runs, "panoptix_pngruns", None)
    assert main(args) == 0
    assert "(libspng decoding; pip install ./extras/pngruns is faster)" in capsys.readouterr().out
