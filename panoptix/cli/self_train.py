"""``panoptix self-train``: teacher -> pseudo-labels -> student (-> fine-tune) rounds end to end
(AinnoSeg, Wu et al. 2020)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from panoptix.cli.options import add_import, add_overrides

HELP = ("teacher-student rounds end to end (AinnoSeg): teacher, pseudo-labels, student on mixed batches, "
        "optional fine-tune, N rounds")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="the system's config (its data.train is the labelled set)")
    p.add_argument("--images", required=True, help="folder of unlabelled images")
    p.add_argument("--out", required=True, help="folder for each stage's run, the pseudo-labels and the summary")
    p.add_argument("--rounds", type=int, default=2, help="teacher-student rounds")
    p.add_argument("--threshold", type=float, default=0.5, help="ignore pixels whose top probability is below it")
    p.add_argument("--tta", default=None, help="the teachers' test-time augmentation, e.g. 'scales=0.75,1,1.25 flip'")
    p.add_argument("--finetune-iters", type=int, default=0, help="fine-tune each student on labelled data alone")
    p.add_argument("--teacher", default=None, help="start from this teacher checkpoint instead of training one")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    add_overrides(p, "key=value config overrides (every stage)")
    add_import(p)


def run(args: argparse.Namespace) -> int:
    from panoptix.engine.self_train import self_train

    record = self_train(args.config, Path(args.images), Path(args.out), args.rounds, args.threshold, args.tta,
                        args.finetune_iters, args.teacher, args.overrides, args.imports, device=args.device)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return 0
    keys = list(dict.fromkeys(k for row in record["stages"] for k in row if k not in ("stage", "checkpoint")))
    print(f"{'stage':24s} " + " ".join(f"{k:>9s}" for k in keys))
    for row in record["stages"]:
        print(f"{row['stage']:24s} " + " ".join(f"{row.get(k, float('nan')):9.1f}" for k in keys))
    print(f"final teacher: {record['final_teacher']}; summary: {Path(args.out) / 'self_train_summary.json'}")
    return 0
