"""The ``panoptix`` command: synth, perturb, evaluate, viz, demo.

Every command shows progress on long work, ends with a readable summary and writes its
machine-readable results as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from panoptix.data.errors import PanopticFormatError


def _write_json(path: Path, data: Any) -> None:
    def clean(v):
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(data), indent=1))


# --------------------------------------------------------------------------- synth
def cmd_synth(args: argparse.Namespace) -> int:
    from panoptix.data.synthetic import SynthConfig, write_synthetic

    t0 = time.time()
    cfg = SynthConfig(size=args.size, width=args.width, occlusion=args.occlusion)
    summary = write_synthetic(args.out, {"train": args.train, "val": args.val}, seed=args.seed, cfg=cfg,
                              workers=args.workers)
    summary["seconds"] = round(time.time() - t0, 2)
    _write_json(Path(args.out) / "synth_summary.json", summary)
    for split, s in summary["splits"].items():
        print(f"{split:5s}: {s['images']} images, {s['segments']} segments ({s['crowd']} crowd)")
    print(f"wrote {args.out} in {summary['seconds']} s (summary: {Path(args.out) / 'synth_summary.json'})")
    return 0


# --------------------------------------------------------------------------- perturb
def cmd_perturb(args: argparse.Namespace) -> int:
    from panoptix.data.perturb import write_perturbed

    n = write_perturbed(args.gt_json, args.gt_dir, args.out_json, args.out_dir, seed=args.seed,
                        strength=args.strength)
    print(f"wrote a perturbed prediction set of {n} images: {args.out_json}")
    return 0


# --------------------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    from panoptix.evaluation.panoptic import evaluate_coco_panoptic, format_table

    t0 = time.time()
    results = evaluate_coco_panoptic(args.gt_json, args.pred_json, args.gt_dir, args.pred_dir,
                                     workers=args.workers, progress=True)
    seconds = time.time() - t0
    print(format_table(results))
    print(f"{results['num_images']} images in {seconds:.2f} s")
    out = Path(args.out) if args.out else Path(args.pred_json).with_name("pq_results.json")
    _write_json(out, {**results, "seconds": seconds})
    print(f"results: {out}")
    return 0


# --------------------------------------------------------------------------- viz
def cmd_viz(args: argparse.Namespace) -> int:
    from PIL import Image
    from tqdm import tqdm

    from panoptix.data.formats import load_coco_panoptic, read_sample
    from panoptix.viz import overlay, side_by_side

    meta, gt_records = load_coco_panoptic(args.gt_json, args.gt_dir, args.images)
    preds = {}
    if args.pred_json:
        _, pred_records = load_coco_panoptic(args.pred_json, args.pred_dir, meta=meta)
        preds = {r.image_id: r for r in pred_records}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = gt_records[: args.limit] if args.limit else gt_records
    written = []
    for rec in tqdm(records, desc="viz", unit="img"):
        gt = read_sample(rec, meta, load_image=args.images is not None)
        name = Path(rec.png_path).stem + ".png"
        if rec.image_id in preds:
            pred = read_sample(preds[rec.image_id], meta, load_image=False)
            img = side_by_side(gt.image, (gt.ids, gt.segments), (pred.ids, pred.segments), meta, labels=args.labels)
        else:
            img = overlay(gt.image, gt.ids, gt.segments, meta, labels=args.labels)
        Image.fromarray(img).save(out / name)
        written.append(name)
    _write_json(out / "viz_index.json", {"images": written, "with_prediction": bool(preds)})
    print(f"wrote {len(written)} overlay(s) to {out}")
    return 0


# --------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    """Synthetic set (if absent) -> perturbed predictions -> PQ -> overlays."""
    from panoptix.data.perturb import write_perturbed
    from panoptix.data.synthetic import synthetic_paths
    from panoptix.evaluation.panoptic import evaluate_coco_panoptic, format_table

    out = Path(args.out)
    data = out / "synthetic"
    val = synthetic_paths(data, "val")
    if not val["gt_json"].is_file():
        print(f"[1/4] generating the synthetic dataset in {data}")
        cmd_synth(build_parser().parse_args(["synth", "--out", str(data), "--train", str(args.train), "--val",
                                             str(args.val), "--size", str(args.size), "--seed", str(args.seed)]))
    else:
        print(f"[1/4] synthetic dataset present: {data}")
    pred_json, pred_dir = out / "predictions" / "panoptic_val.json", out / "predictions" / "panoptic_val"
    print("[2/4] writing a perturbed copy of the val ground truth as predictions")
    write_perturbed(val["gt_json"], val["gt_dir"], pred_json, pred_dir, seed=args.seed)
    print("[3/4] evaluating PQ")
    results = evaluate_coco_panoptic(val["gt_json"], pred_json, val["gt_dir"], pred_dir, workers=2, progress=True)
    _write_json(out / "pq_results.json", results)
    print("[4/4] writing overlays")
    cmd_viz(build_parser().parse_args(["viz", "--gt-json", str(val["gt_json"]), "--images", str(val["image_dir"]),
                                       "--pred-json", str(pred_json), "--pred-dir", str(pred_dir),
                                       "--out", str(out / "overlays"), "--limit", str(args.overlays)]))
    print()
    print(format_table(results))
    print(f"PQ results: {out / 'pq_results.json'}; overlays: {out / 'overlays'}")
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="panoptix", description="Panoptic segmentation toolkit")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a synthetic COCO panoptic dataset")
    s.add_argument("--out", required=True)
    s.add_argument("--train", type=int, default=1000)
    s.add_argument("--val", type=int, default=200)
    s.add_argument("--size", type=int, default=128, help="image height (and width unless --width)")
    s.add_argument("--width", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--occlusion", choices=("normal", "heavy"), default="normal")
    s.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("perturb", help="write a perturbed copy of a ground truth as a prediction set")
    s.add_argument("--gt-json", required=True)
    s.add_argument("--gt-dir", default=None)
    s.add_argument("--out-json", required=True)
    s.add_argument("--out-dir", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--strength", type=float, default=1.0)
    s.set_defaults(func=cmd_perturb)

    s = sub.add_parser("evaluate", help="COCO panoptic quality (PQ/SQ/RQ) of a prediction set")
    s.add_argument("--gt-json", required=True)
    s.add_argument("--gt-dir", default=None, help="default: --gt-json without .json")
    s.add_argument("--pred-json", required=True)
    s.add_argument("--pred-dir", default=None, help="default: --pred-json without .json")
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--out", default=None, help="results JSON (default: pq_results.json beside --pred-json)")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("viz", help="draw panoptic overlays (GT | prediction when a prediction is given)")
    s.add_argument("--gt-json", required=True)
    s.add_argument("--gt-dir", default=None)
    s.add_argument("--images", default=None, help="folder of the RGB images")
    s.add_argument("--pred-json", default=None)
    s.add_argument("--pred-dir", default=None)
    s.add_argument("--out", required=True)
    s.add_argument("--labels", action="store_true", help="write category names on segments")
    s.add_argument("--limit", type=int, default=None)
    s.set_defaults(func=cmd_viz)

    s = sub.add_parser("demo", help="synthetic data -> predictions -> PQ -> overlays")
    s.add_argument("--out", default="runs/demo")
    s.add_argument("--train", type=int, default=1000)
    s.add_argument("--val", type=int, default=200)
    s.add_argument("--size", type=int, default=128)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overlays", type=int, default=16)
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PanopticFormatError as err:
        print(f"panoptix {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
