"""``panoptix demo``: synthetic set (if absent) -> train the tiny system -> predict val -> PQ -> overlays
and curves. Each step is the other command's ``run``, called with its arguments."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from panoptix.cli import predict, synth, train, viz
from panoptix.cli.options import add_import, add_overrides, namespace
from panoptix.jsonio import write_json

HELP = "synthetic data -> train the tiny system -> predict -> PQ -> overlays"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="folder for the data, the run, predictions and overlays")
    p.add_argument("--config", default="panoptic_fpn_tiny", help="the training config (YAML file or bundled name)")
    add_overrides(p, "key=value overrides of the training config")
    p.add_argument("--train", type=int, default=1000, help="synthetic training images")
    p.add_argument("--val", type=int, default=200, help="synthetic validation images")
    p.add_argument("--size", type=int, default=128, help="synthetic image size")
    p.add_argument("--seed", type=int, default=0, help="the synthetic set's seed")
    p.add_argument("--overlays", type=int, default=16, help="overlays to draw")
    p.add_argument("--ranks", type=int, default=None,
                   help="CPU training processes, as panoptix train --ranks (default: 1 where a GPU is visible, "
                        "else 2: two 1-thread ranks train about 10%% more images per second than one 2-thread "
                        "process on a 2-core CPU)")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="CPU training precision: bfloat16 autocast (solver.cpu_amp) where the CPU computes "
                        "bfloat16 natively (auto), or as given")
    add_import(p)


class PhaseClock:
    """Wall seconds of consecutive phases: ``lap(name)`` closes the phase that began at the last lap."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._t, 1)
        self._t = now


def run(args: argparse.Namespace) -> int:
    import torch

    from panoptix.data.synthetic import synthetic_paths
    from panoptix.engine.checkpoint import last_checkpoint
    from panoptix.engine.precision import cpu_has_native_bfloat16
    from panoptix.evaluation.panoptic import evaluate_coco_panoptic, format_table

    out = Path(args.out)
    data, train_dir, pred_dir = out / "synthetic", out / "train", out / "predictions"
    val = synthetic_paths(data, "val")
    clock = PhaseClock()
    if not val["gt_json"].is_file():
        print(f"[1/5] generating the synthetic dataset in {data}")
        synth.run(namespace(synth, out=str(data), train=args.train, val=args.val, size=args.size, seed=args.seed))
    else:
        print(f"[1/5] synthetic dataset present: {data}")
    clock.lap("data")
    bfloat16 = args.precision == "bfloat16" or (args.precision == "auto" and cpu_has_native_bfloat16())
    print(f"[2/5] training {args.config} on CPU-sized settings{' in bfloat16 autocast' if bfloat16 else ''} "
          f"(resumes if interrupted): {train_dir}")
    overrides = [f"data.train.root={data}", f"data.val.root={data}", f"engine.output_dir={train_dir}",
                 f"solver.cpu_amp={str(bfloat16).lower()}", "engine.final_eval=false", *args.overrides]
    ranks = args.ranks or (1 if torch.cuda.is_available() else 2)
    code = train.run(namespace(train, config=args.config, overrides=overrides, imports=args.imports, ranks=ranks))
    if code:
        return code
    clock.lap("training")
    print("[3/5] predicting the val split")
    predict.run(namespace(predict, weights=str(last_checkpoint(train_dir)), input=str(val["image_dir"]),
                          output=str(pred_dir), gt_json=str(val["gt_json"]), no_overlays=True, imports=args.imports))
    clock.lap("prediction")
    pred_json = pred_dir / "panoptic_pred.json"
    print("[4/5] evaluating PQ")
    results = evaluate_coco_panoptic(val["gt_json"], pred_json, val["gt_dir"], workers=2, progress=True)
    write_json(out / "pq_results.json", results)
    clock.lap("evaluation")
    print("[5/5] writing overlays (ground truth | prediction)")
    viz.run(namespace(viz, gt_json=str(val["gt_json"]), images=str(val["image_dir"]), pred_json=str(pred_json),
                      out=str(out / "overlays"), limit=args.overlays))
    clock.lap("overlays")
    write_json(out / "demo_summary.json", {"config": args.config, "cpu_bfloat16": bfloat16, "seconds": clock.laps,
                                           "pq": {k: results[k] for k in ("All", "Things", "Stuff")}})
    print()
    print(format_table(results))
    print("wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in clock.laps.items()))
    print(f"PQ results: {out / 'pq_results.json'}; overlays: {out / 'overlays'}; "
          f"training curve: {train_dir / 'curves.png'}")
    return 0
