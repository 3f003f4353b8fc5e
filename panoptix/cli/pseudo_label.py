"""``panoptix pseudo-label``: a scene parsing teacher's pseudo-labels for unlabelled images, written as a
label folder (AinnoSeg's self-training, Wu et al. 2020)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from panoptix.cli.options import add_model_options, print_lines
from panoptix.errors import PanoptixError

HELP = ("a scene parsing teacher's pseudo-labels for unlabelled images (low-confidence pixels ignored), written "
        "as a label folder")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", required=True, help="an image or a folder of unlabelled images")
    p.add_argument("--out", required=True, help="label folder: images/SPLIT, annotations/SPLIT, categories.json")
    add_model_options(p, weights="required")
    p.add_argument("--recursive", action="store_true", help="take the images of --images' sub-folders too")
    p.add_argument("--threshold", type=float, default=0.5, help="ignore pixels whose top probability is below it")
    p.add_argument("--tta", default=None, metavar="'scales=0.5,0.75,1,1.25,1.5,1.75,2 flip'",
                   help="the teacher's test-time augmentation (softmax averaged)")
    p.add_argument("--split", default="pseudo", help="the split name the labels are written under")


def run(args: argparse.Namespace) -> int:
    from panoptix.engine.build import load_ensemble
    from panoptix.engine.checkpoint import resolve_weights
    from panoptix.engine.image_files import list_images
    from panoptix.engine.pseudo_label import RECORD, write_pseudo_labels

    t0 = time.time()
    teacher = str(resolve_weights(args.weights))   # a run folder names its checkpoint, which the record hashes
    predictor, meta = load_ensemble([(teacher, 1.0)], args.tta, config=args.config, overrides=args.overrides,
                                    device=args.device, imports=args.imports)
    if not hasattr(predictor.model, "probabilities"):   # what write_pseudo_labels reads
        raise PanoptixError(f"{args.weights} is not a scene parsing system; pseudo-labels come from semantic teachers")
    listing = list_images(args.images, args.recursive)
    print_lines("pseudo-label", "warning", [str(s) for s in listing.skipped])
    print_lines("pseudo-label", "note", listing.folders_note())
    record = write_pseudo_labels(predictor.model, meta, listing.files, args.out, args.threshold, args.split,
                                 teacher=teacher, tta_text=args.tta, device=str(predictor.device),
                                 root=listing.root)
    print_lines("pseudo-label", "note", record["notes"])
    print(f"pseudo-labelled {record['images']} image(s) in {time.time() - t0:.1f} s at threshold {args.threshold}: "
          f"{100 * record['ignored_fraction']:.1f}% of pixels ignored; dataset: format ade20k, root {args.out}, "
          f"split {args.split} (record: {Path(args.out) / RECORD})")
    return 0
