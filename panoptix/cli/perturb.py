"""``panoptix perturb``: a perturbed copy of a ground truth, as a prediction set (for testing evaluators)."""

from __future__ import annotations

import argparse

HELP = "write a perturbed copy of a ground truth as a prediction set"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gt-json", required=True, help="the ground truth's COCO panoptic JSON")
    p.add_argument("--gt-dir", default=None, help="its PNG folder (default: --gt-json without .json)")
    p.add_argument("--out-json", required=True, help="the prediction JSON to write")
    p.add_argument("--out-dir", required=True, help="the prediction PNG folder to write")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--strength", type=float, default=1.0,
                   help="scale of the perturbations (drops, class swaps, merges)")


def run(args: argparse.Namespace) -> int:
    from panoptix.data.perturb import write_perturbed

    n = write_perturbed(args.gt_json, args.gt_dir, args.out_json, args.out_dir, seed=args.seed,
                        strength=args.strength)
    print(f"wrote a perturbed prediction set of {n} images: {args.out_json}")
    return 0
