"""PQ evaluation speed, whole processes: ``panoptix evaluate`` vs panopticapi vs hotcoco, one run.

Generates (once) 500 synthetic 640x480 images with about 20 segments each and perturbed
predictions, then times each evaluator as a user runs it, start-up and imports included, from the
same files, at 1 and 2 workers (processes for panoptix and panopticapi, Rayon threads for
hotcoco), best of ``--repeat``, and checks that all give the same PQ.

- panoptix: the ``panoptix evaluate`` command.
- panopticapi: ``python -c`` running its ``pq_compute`` (its pool has cpu_count() processes, so
  cpu_count is set to the worker count).
- hotcoco: ``python -c`` running ``hotcoco.panoptic.pq_compute`` with ``RAYON_NUM_THREADS``.

Then two tables that explain the figures: the PNG decoders that install from wheels, timed on
these files, and where ``panoptix evaluate``'s time goes per image.

    python bench/pq_speed.py [--images 500] [--repeat 3] [--out bench/out/pq_speed20]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from panoptix.data.perturb import write_perturbed
from panoptix.data.synthetic import SynthConfig, synthetic_paths, write_synthetic

SYNTH = SynthConfig(size=480, width=640, min_things=12, max_things=24)   # about 20 segments per image


def make_data(out: Path, n: int) -> dict[str, Path]:
    paths = synthetic_paths(out, "val")
    pred_json, pred_dir = out / "pred" / "panoptic_val.json", out / "pred" / "panoptic_val"
    stamp = out / "bench_data.json"
    want = {"images": n, "synth": repr(SYNTH), "perturb_seed": 1}
    if not pred_json.is_file() or not stamp.is_file() or json.loads(stamp.read_text()) != want:
        shutil.rmtree(out, ignore_errors=True)
        write_synthetic(out, {"val": n}, seed=0, cfg=SYNTH)
        write_perturbed(paths["gt_json"], paths["gt_dir"], pred_json, pred_dir, seed=1)
        stamp.write_text(json.dumps(want))
    return {"gt_json": paths["gt_json"], "gt_dir": paths["gt_dir"], "pred_json": pred_json, "pred_dir": pred_dir}


_PANOPTICAPI = """
import contextlib, io, multiprocessing, sys
multiprocessing.cpu_count = lambda: int(sys.argv[5])
from panopticapi.evaluation import pq_compute
with contextlib.redirect_stdout(io.StringIO()):
    r = pq_compute(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4])
print(repr(float(r["All"]["pq"])))
"""

_HOTCOCO = """
import contextlib, io, sys
from hotcoco.panoptic import pq_compute
with contextlib.redirect_stdout(io.StringIO()):
    r = pq_compute(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4])
print(repr(float(r["All"]["pq"])))
"""


# `panoptix evaluate` with the compiled PNG path switched off: decoding with libspng, as without the extra
_WITHOUT_PNGRUNS = """
import sys
from panoptix.evaluation import png_runs
png_runs.panoptix_pngruns = None
from panoptix.cli import main
sys.argv[0] = "panoptix"
main()
"""


def _panoptix_command(compiled: bool = True) -> list[str]:
    if not compiled:
        return [sys.executable, "-c", _WITHOUT_PNGRUNS]
    script = Path(sys.executable).with_name("panoptix")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "panoptix.cli"]


def run_process(name: str, d: dict[str, Path], workers: int, tmp: Path) -> tuple[float, float]:
    """Wall seconds of one whole process, and the PQ it reports."""
    files = [str(d[k]) for k in ("gt_json", "pred_json", "gt_dir", "pred_dir")]
    env = dict(os.environ)
    if name.startswith("panoptix"):
        out = tmp / "pq.json"
        cmd = [*_panoptix_command(name == "panoptix"), "evaluate", "--gt-json", files[0], "--pred-json", files[1],
               "--gt-dir", files[2], "--pred-dir", files[3], "--workers", str(workers), "--out", str(out)]
    elif name == "panopticapi":
        cmd = [sys.executable, "-c", _PANOPTICAPI, *files, str(workers)]
    else:
        cmd = [sys.executable, "-c", _HOTCOCO, *files]
        env["RAYON_NUM_THREADS"] = str(workers)
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
    pq = json.loads(out.read_text())["All"]["pq"] if name.startswith("panoptix") else float(proc.stdout.split()[-1])
    return seconds, pq


def whole_process_table(d: dict[str, Path], n: int, repeat: int, tmp: Path) -> list[dict]:
    from panoptix.evaluation.png_runs import available

    names = ["panoptix", "panopticapi"]
    if available():
        names.insert(1, "panoptix-spng")
        print("panoptix: the compiled PNG path (extras/pngruns); panoptix-spng: the same without it (libspng)")
    else:
        print("panoptix decodes with libspng: the compiled PNG path is not installed (pip install ./extras/pngruns)")
    try:
        import hotcoco  # noqa: F401
        names.append("hotcoco")
    except ImportError:
        print("hotcoco is not installed (pip install -e .[bench], or make bench): left out")
    best: dict[tuple[str, int], tuple[float, float]] = {}
    for _ in range(repeat):                    # interleaved, so that drift hits every evaluator alike
        for workers in (1, 2):
            for name in names:
                secs, pq = run_process(name, d, workers, tmp)
                if (name, workers) not in best or secs < best[name, workers][0]:
                    best[name, workers] = (secs, pq)
    rows = [{"evaluator": name, "workers": w, "seconds": s, "images_per_s": n / s, "pq": pq}
            for (name, w), (s, pq) in best.items()]
    rows.sort(key=lambda r: (r["workers"], names.index(r["evaluator"])))
    print(f"\nWhole process (start-up, imports, JSON, PNGs), {n} images 640x480, "
          f"{os.cpu_count()} CPU cores, best of {repeat}")
    print(f"{'evaluator':14s} {'workers':>7s} {'seconds':>8s} {'images/s':>9s} {'vs panopticapi':>15s} "
          f"{'vs hotcoco':>11s} {'PQ':>10s}")
    for r in rows:
        base = best["panopticapi", r["workers"]][0]
        hot = best.get(("hotcoco", r["workers"]), (float("nan"),))[0]
        r["vs_panopticapi"], r["vs_hotcoco"] = base / r["seconds"], hot / r["seconds"]
        print(f"{r['evaluator']:14s} {r['workers']:7d} {r['seconds']:8.2f} {r['images_per_s']:9.1f} "
              f"{r['vs_panopticapi']:14.2f}x {r['vs_hotcoco']:10.2f}x {r['pq']:10.6f}")
    pqs = {round(r["pq"], 12) for r in rows}
    print("all evaluators agree on PQ" if len(pqs) == 1 else f"PQ DIFFERS: {sorted(pqs)}")
    return rows


def _decoders() -> dict:
    """PNG decoders that install from wheels, each to an (H, W, >=3) uint8 array; None if absent."""
    import pyspng
    from PIL import Image

    out = {"pyspng (libspng) RGB": lambda b: pyspng.load(b, format="RGB"),
           "pyspng (libspng) RGBA": lambda b: pyspng.load(b, format="RGBA"),
           "Pillow": lambda b: np.asarray(Image.open(io.BytesIO(b)))}
    try:
        import imagecodecs
        out["imagecodecs png (libpng)"] = imagecodecs.png_decode
        out["imagecodecs spng (libspng)"] = imagecodecs.spng_decode
    except ImportError:
        out["imagecodecs"] = None
    try:
        import cv2
        cv2.setNumThreads(1)
        out["opencv imdecode"] = lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED)
    except ImportError:
        out["opencv-python-headless"] = None
    try:
        import torch
        from torchvision.io import decode_png
        torch.set_num_threads(1)
        out["torchvision decode_png"] = lambda b: decode_png(torch.frombuffer(bytearray(b), dtype=torch.uint8))
    except ImportError:
        out["torchvision"] = None
    return out


def decoder_table(d: dict[str, Path], limit: int = 300) -> list[dict]:
    files = sorted(d["gt_dir"].glob("*.png"))[:limit] + sorted(d["pred_dir"].glob("*.png"))[:limit]
    blobs = [f.read_bytes() for f in files]
    print(f"\nPNG decoders, {len(blobs)} of these PNGs in memory, 1 thread, best of 3")
    print(f"{'decoder':28s} {'ms/PNG':>7s}")
    rows = []
    for name, fn in _decoders().items():
        if fn is None:
            print(f"{name:28s} {'not installed':>13s}")
            continue
        times = []
        for _ in range(3):
            t = time.perf_counter()
            for b in blobs:
                fn(b)
            times.append(time.perf_counter() - t)
        rows.append({"decoder": name, "ms_per_png": 1000 * min(times) / len(blobs)})
        print(f"{name:28s} {rows[-1]['ms_per_png']:7.3f}")
    return rows


def profile_table(d: dict[str, Path]) -> dict:
    """Where ``panoptix evaluate`` spends its time per image, in one process (1 worker)."""
    from panoptix.data import png
    from panoptix.evaluation import panoptic, pq_core
    from panoptix.evaluation.allocator import keep_freed_memory

    keep_freed_memory()
    spent: dict[str, float] = {}

    def timed(mod, attr, key):
        fn = getattr(mod, attr)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] = spent.get(key, 0.0) + time.perf_counter() - t
        setattr(mod, attr, wrapper)
        return fn

    saved = [(png, "_packed_rgb_to_ids", timed(png, "_packed_rgb_to_ids", "RGB -> ids (2 PNGs)")),
             (panoptic, "read_id_png", timed(panoptic, "read_id_png", "read + decode + ids (2 PNGs)")),
             (pq_core, "pair_runs", timed(pq_core, "pair_runs", "run-length pairs")),
             (panoptic, "image_pq_stats", timed(panoptic, "image_pq_stats", "PQ core (runs included)")),
             (panoptic, "file_pair_counts", timed(panoptic, "file_pair_counts", "compiled: read + pair counts")),
             (panoptic, "pairs_pq_stats", timed(panoptic, "pairs_pq_stats", "PQ core (from pixel pairs)")),
             (panoptic, "segment_table", timed(panoptic, "segment_table", "segments_info -> tables"))]
    t = time.perf_counter()
    res = panoptic.evaluate_coco_panoptic(d["gt_json"], d["pred_json"], d["gt_dir"], d["pred_dir"], workers=1)
    total = time.perf_counter() - t
    for mod, attr, fn in saved:
        setattr(mod, attr, fn)
    n = res["num_images"]
    print(f"\npanoptix evaluate, 1 worker, per image (of {1000 * total / n:.3f} ms in evaluate_coco_panoptic)")
    for key, secs in spent.items():
        print(f"  {key:32s} {1000 * secs / n:7.3f} ms")
    return {"total_ms_per_image": 1000 * total / n, **{k: 1000 * v / n for k, v in spent.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="bench/out/pq_speed20")
    args = ap.parse_args()
    out = Path(args.out)
    d = make_data(out, args.images)
    segments = np.mean([len(a["segments_info"]) for a in json.loads(d["gt_json"].read_text())["annotations"]])
    print(f"{args.images} images, {segments:.1f} ground-truth segments per image on average")
    tmp = out / "tmp"
    tmp.mkdir(exist_ok=True)
    results = {"whole_process": whole_process_table(d, args.images, args.repeat, tmp),
               "decoders": decoder_table(d), "profile": profile_table(d)}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
