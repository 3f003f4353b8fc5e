"""Agreement of `panoptix evaluate` with panopticapi-lite on every figure.

Runs both evaluators on (1) a synthetic val split against perturbed copies and (2) the shared COCO
val2017 sample against itself and against perturbed copies, and prints the largest absolute
difference over All/Things/Stuff PQ, SQ, RQ and every per-class PQ, SQ, RQ (N must be equal).

    python bench/pq_agreement.py [--synthetic runs/demo/synthetic] [--shared ../shared]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path

from panopticapi.evaluation import pq_compute

from panoptix.data.perturb import write_perturbed
from panoptix.data.synthetic import SynthConfig, synthetic_paths, write_synthetic
from panoptix.evaluation.panoptic import evaluate_coco_panoptic


def max_difference(ours: dict, ref: dict) -> float:
    diff = 0.0
    for g in ("All", "Things", "Stuff"):
        if ours[g]["n"] != ref[g]["n"]:
            raise AssertionError(f"{g}: n differs ({ours[g]['n']} vs {ref[g]['n']})")
        diff = max(diff, *(abs(ours[g][m] - ref[g][m]) for m in ("pq", "sq", "rq")))
    for c, r in ref["per_class"].items():
        diff = max(diff, *(abs(ours["per_class"][c][m] - r[m]) for m in ("pq", "sq", "rq")))
    return diff


def compare(name: str, gt_json: Path, gt_dir: Path, pred_json: Path, pred_dir: Path, rows: list) -> None:
    ours = evaluate_coco_panoptic(gt_json, pred_json, gt_dir, pred_dir, workers=2)
    with contextlib.redirect_stdout(io.StringIO()):
        ref = pq_compute(str(gt_json), str(pred_json), str(gt_dir), str(pred_dir))
    rows.append({"case": name, "images": ours["num_images"], "pq_panoptix": ours["All"]["pq"],
                 "pq_panopticapi": ref["All"]["pq"], "max_abs_diff": max_difference(ours, ref)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synthetic", default="runs/demo/synthetic", help="synthetic root (written if absent)")
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    rows: list = []
    syn = synthetic_paths(args.synthetic, "val")
    if not syn["gt_json"].is_file():
        write_synthetic(args.synthetic, {"train": 0, "val": 200}, seed=0, cfg=SynthConfig())
    coco = Path(args.shared) / "data/coco_panoptic_val2017_sample/sample_data"
    cj, cd = coco / "panoptic_examples.json", coco / "panoptic_examples"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for seed in range(args.seeds):
            pj, pd = tmp / f"s{seed}.json", tmp / f"s{seed}"
            write_perturbed(syn["gt_json"], syn["gt_dir"], pj, pd, seed=seed)
            compare(f"synthetic val vs perturbed (seed {seed})", syn["gt_json"], syn["gt_dir"], pj, pd, rows)
        compare("COCO sample vs itself", cj, cd, cj, cd, rows)
        for seed in range(args.seeds):
            pj, pd = tmp / f"c{seed}.json", tmp / f"c{seed}"
            write_perturbed(cj, cd, pj, pd, seed=seed)
            compare(f"COCO sample vs perturbed (seed {seed})", cj, cd, pj, pd, rows)
    print(f"{'case':40s} {'images':>6s} {'PQ panoptix':>14s} {'PQ panopticapi':>15s} {'max |diff|':>11s}")
    for r in rows:
        print(f"{r['case']:40s} {r['images']:6d} {r['pq_panoptix']:14.10f} {r['pq_panopticapi']:15.10f} "
              f"{r['max_abs_diff']:11.2e}")
    worst = max(r["max_abs_diff"] for r in rows)
    print(f"largest difference over all figures: {worst:.2e} ({'within' if worst <= 1e-12 else 'OUTSIDE'} 1e-12)")
    Path("bench/out").mkdir(parents=True, exist_ok=True)
    Path("bench/out/pq_agreement.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
