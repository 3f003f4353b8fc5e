"""``panoptix synth``: write a synthetic COCO panoptic dataset."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from panoptix.jsonio import write_json

HELP = "write a synthetic COCO panoptic dataset"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="dataset root (annotations/, train/, val/ are written in it)")
    p.add_argument("--train", type=int, default=1000, help="images in the train split")
    p.add_argument("--val", type=int, default=200, help="images in the val split")
    p.add_argument("--size", type=int, default=128, help="image height (and width unless --width)")
    p.add_argument("--width", type=int, default=None, help="image width (default: --size)")
    p.add_argument("--seed", type=int, default=0, help="random seed (the same seed writes the same set)")
    p.add_argument("--occlusion", choices=("normal", "heavy"), default="normal",
                   help="heavy: frequent small-on-large pairs, a rare class on a frequent one "
                        "(OANet's occlusion case)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")


def run(args: argparse.Namespace) -> int:
    from panoptix.data.synthetic import SynthConfig, write_synthetic

    t0 = time.time()
    cfg = SynthConfig(size=args.size, width=args.width, occlusion=args.occlusion)
    summary = write_synthetic(args.out, {"train": args.train, "val": args.val}, seed=args.seed, cfg=cfg,
                              workers=args.workers)
    summary["seconds"] = round(time.time() - t0, 2)
    write_json(Path(args.out) / "synth_summary.json", summary)
    for split, s in summary["splits"].items():
        print(f"{split:5s}: {s['images']} images, {s['segments']} segments ({s['crowd']} crowd)")
    print(f"wrote {args.out} in {summary['seconds']} s (summary: {Path(args.out) / 'synth_summary.json'})")
    return 0
