"""``panoptix viz``: panoptic overlays of a ground truth, beside a prediction when one is given."""

from __future__ import annotations

import argparse
from pathlib import Path

from panoptix.cli.options import add_data_option, resolve_data
from panoptix.errors import PanoptixError
from panoptix.jsonio import write_json

HELP = "draw panoptic overlays (GT | prediction when a prediction is given)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gt-json", default=None, help="the ground truth's COCO panoptic JSON (or --data)")
    p.add_argument("--gt-dir", default=None, help="its PNG folder (default: --gt-json without .json)")
    p.add_argument("--images", default=None, help="folder of the RGB images (default: segments on grey)")
    add_data_option(p)
    p.add_argument("--pred-json", default=None, help="a prediction's COCO panoptic JSON, drawn beside the truth")
    p.add_argument("--pred-dir", default=None, help="its PNG folder (default: --pred-json without .json)")
    p.add_argument("--out", required=True, help="folder for the overlay PNGs and viz_index.json")
    p.add_argument("--labels", action="store_true", help="write category names on segments")
    p.add_argument("--limit", type=int, default=None, help="draw the first N images only")
    p.add_argument("--scale", type=int, default=1, help="upscale the overlays this many times (small images)")


def run(args: argparse.Namespace) -> int:
    from PIL import Image
    from tqdm import tqdm

    from panoptix.data.formats import load_coco_panoptic, read_sample
    from panoptix.viz import annotate, side_by_side

    resolve_data(args)
    if not args.gt_json:
        raise PanoptixError("name the ground truth: --gt-json FILE, or --data ROOT --split S")
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
            img = side_by_side(gt.image, (gt.ids, gt.segments), (pred.ids, pred.segments), meta, labels=args.labels,
                               scale=args.scale, with_legend=True)
        else:
            img = annotate(gt.image, gt.ids, gt.segments, meta, labels=args.labels, scale=args.scale)
        Image.fromarray(img).save(out / name)
        written.append(name)
    write_json(out / "viz_index.json", {"images": written, "with_prediction": bool(preds)})
    print(f"wrote {len(written)} overlay(s) to {out}")
    return 0
