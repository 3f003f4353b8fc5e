"""``panoptix predict``: panoptic predictions (COCO JSON, PNGs, overlays; label PNGs for scene parsing)
of an image or a folder, from one checkpoint, an ensemble with TTA, or a two-level fusion."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from panoptix.cli.options import add_model_options, print_lines
from panoptix.errors import PanoptixError
from panoptix.jsonio import write_json

HELP = "panoptic predictions (COCO JSON + PNGs + overlays) for images"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="an image or a folder of images")
    p.add_argument("--output", required=True, help="folder for panoptic_pred.json, its PNGs and the overlays")
    add_model_options(p, weights="optional", batch_size=4)
    p.add_argument("--tta", default=None, metavar="'scales=0.75,1,1.25 flip'",
                   help="panoptic test-time augmentation (two-stage systems): scales are multiples of the test size")
    p.add_argument("--ensemble", default=None, metavar="a.pth:0.4,b.pth:1.2",
                   help="weighted checkpoints to ensemble (with --weights, that one joins with weight 1)")
    p.add_argument("--box-voting", action="store_true", help="TTA/ensemble: vote the merged boxes")
    p.add_argument("--two-level", default=None, metavar="FUSION.json",
                   help="predict with the two-level fusion of the ends fitted by panoptix fit-fusion")
    p.add_argument("--fusion", default=None, help="--two-level: the merge (default: the record's, heuristic)")
    p.add_argument("--recursive", action="store_true", help="take the images of --input's sub-folders too")
    p.add_argument("--gt-json", default=None, help="take image ids from this COCO panoptic JSON (by file name)")
    p.add_argument("--no-overlays", action="store_true", help="skip the overlay PNGs")
    p.add_argument("--labels", action="store_true", help="write category names on the overlays' segments")
    p.add_argument("--scale", type=int, default=1, help="upscale the overlays this many times (small images)")
    p.add_argument("--strict", action="store_true",
                   help="exit non-zero when a file is skipped (unreadable, or not an image)")


def load(args: argparse.Namespace):
    """(`Predictor`, `DatasetMeta`) of the options: a two-level fusion, an ensemble / TTA, or one checkpoint."""
    if args.two_level:
        from panoptix.engine.build import load_two_level

        return load_two_level(args.two_level, args.fusion, args.overrides, args.batch_size, args.device, args.imports)
    if args.ensemble or args.tta or args.box_voting:
        from panoptix.engine.build import load_ensemble
        from panoptix.engine.ensemble import parse_ensemble

        members = parse_ensemble(args.ensemble) if args.ensemble else []
        if args.weights:
            members = [(args.weights, 1.0)] + members
        return load_ensemble(members, args.tta, args.box_voting, args.config, args.overrides, args.batch_size,
                             args.device, args.imports)
    if args.weights:
        from panoptix.engine.build import load_predictor

        return load_predictor(args.weights, args.config, args.overrides, args.batch_size, args.device, args.imports)
    raise PanoptixError("name a checkpoint with --weights, or several with --ensemble")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from panoptix.engine.image_files import image_ids_from_gt, list_images
    from panoptix.engine.predictor import predict_files

    t0 = time.time()
    predictor, meta = load(args)
    listing = list_images(args.input, args.recursive)
    skipped = list(listing.skipped)
    print_lines("predict", "warning", [str(s) for s in skipped])
    print_lines("predict", "note", listing.folders_note())
    ids = image_ids_from_gt(args.gt_json) if args.gt_json else None
    done = predict_files(predictor, meta, listing.files, args.output, image_ids=ids, overlays=not args.no_overlays,
                        warn=lambda skip: tqdm.write(f"panoptix predict: warning: {skip}", file=sys.stderr),
                        root=listing.root, labels=args.labels, scale=args.scale)
    print_lines("predict", "note", done.notes + getattr(predictor.model, "notes", []))
    skipped += done.skipped
    seconds = time.time() - t0
    summary = Path(args.output) / "predict_summary.json"
    write_json(summary, {"images": done.written, "skipped": [s.to_json() for s in skipped], "seconds": seconds,
                         "weights": str(args.weights), "ensemble": args.ensemble, "tta": args.tta,
                         "box_voting": args.box_voting, "predictions": str(done.json_path),
                         "notes": listing.folders_note() + done.notes})
    overlays = "" if args.no_overlays else f", overlays in {Path(args.output) / 'overlays'}"
    print(f"predicted {done.written} image(s) in {seconds:.1f} s: {done.json_path} (+ PNGs in "
          f"{done.json_path.with_suffix('')}{overlays})" + (f"; skipped {len(skipped)} file(s), listed in {summary}"
                                                           if skipped else ""))
    if done.written == 0:
        raise PanoptixError(f"{args.input}: no image could be read, nothing was predicted (see {summary})")
    if skipped and args.strict:
        raise PanoptixError(f"{len(skipped)} file(s) of {args.input} could not be predicted (--strict); "
                            f"the others were written; all are listed in {summary}")
    return 0
