"""``panoptix ablate``: every merge on one trained model's outputs, or one model per merge trained with
the same recipe (``--train-variants``); a table in the shape of OANet's Table 3 (Liu et al. 2019)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from panoptix.cli.options import add_model_options, write_report
from panoptix.errors import PanoptixError

HELP = ("compare merges (heuristic, ranking, upsnet, upsnet+crf) on one trained model, or train one model per "
        "merge (--train-variants)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_options(p, weights="optional", batch_size=4)
    p.add_argument("--fusions", default="heuristic,ranking,upsnet,upsnet+crf",
                   help="comma-separated merges: a fusion name, optionally +crf or +crf:BACKEND (torch, densecrf)")
    p.add_argument("--crf-backend", default="torch", choices=("torch", "densecrf"),
                   help="the CRF backend of a bare +crf")
    p.add_argument("--data", default=None, help="root of a synthetic dataset (sets data.val.root and data.train.root)")
    p.add_argument("--out", default="runs/ablate", help="folder for ablation.json and ablation.md")
    p.add_argument("--train-variants", action="store_true",
                   help="train one model per merge with --config (same recipe and seed), then evaluate each")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")


def run(args: argparse.Namespace) -> int:
    from panoptix.engine.ablation import markdown_table, parse_merges
    from panoptix.engine.ablation_runs import ablate_checkpoint, ablate_variants

    specs = parse_merges(args.fusions, args.crf_backend)
    overrides = list(args.overrides)
    if args.data:
        overrides += [f"data.val.root={args.data}", f"data.train.root={args.data}"]
    out = Path(args.out)
    t0 = time.time()
    if args.train_variants:
        if not args.config:
            raise PanoptixError("--train-variants needs --config (the recipe every variant is trained with)")
        report = ablate_variants(args.config, overrides, args.imports, specs, out, args.device, args.batch_size,
                                 args.limit)
        title = f"one model per merge, trained with {args.config}"
    else:
        if not args.weights:
            raise PanoptixError("pass --weights (a checkpoint trained with the heads the merges need), "
                                "or --train-variants with --config")
        report = ablate_checkpoint(args.weights, args.config, overrides, args.imports, specs, args.device,
                                   args.batch_size, args.limit)
        title = f"one model ({args.weights}), every merge on the same predictions"
    report.update({"weights": args.weights, "config": args.config, "fusions": [s.name for s in specs],
                   "train_variants": bool(args.train_variants), "seconds": round(time.time() - t0, 1)})
    write_report(out, "ablation", report, markdown_table(report, title))
    return 0
