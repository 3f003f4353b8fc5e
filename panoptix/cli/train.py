"""``panoptix train``: train a system from a YAML config (``torchrun`` for several processes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from panoptix.cli.options import add_import, add_overrides

HELP = "train a system from a YAML config (torchrun for several processes)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True,
                   help="a YAML file, or the name of a bundled config (panoptix config list)")
    p.add_argument("--ranks", type=int, default=1,
                   help="CPU processes joined by gloo on this machine, the threads and the batch split between "
                        "them (2 on 2 cores: about 10%% more images/s, docs/speed.md). GPUs: use torchrun")
    add_overrides(p)
    add_import(p)


def run(args: argparse.Namespace) -> int:
    import os

    from panoptix.config import load_config
    from panoptix.engine.console_log import console_log
    from panoptix.errors import PanoptixError

    if args.ranks < 1:
        raise PanoptixError(f"--ranks {args.ranks}: at least 1")
    if args.ranks > 1 and "WORLD_SIZE" not in os.environ:
        from panoptix.engine.distributed import launch_cpu_ranks

        load_config(args.config, args.overrides, args.imports)  # a bad config fails here, once, not on every rank
        return launch_cpu_ranks(["train", "--config", args.config, *[f"--import={m}" for m in args.imports],
                                 *args.overrides], args.ranks)

    cfg = load_config(args.config, args.overrides, args.imports)
    with console_log(Path(cfg["engine"]["output_dir"]) / "log.txt", enabled=os.environ.get("RANK", "0") == "0"):
        return _train(cfg)


def _train(cfg: dict) -> int:
    from panoptix.engine.build import build_training

    trainer = build_training(cfg)
    try:
        summary = trainer.train()
    except BaseException:
        trainer.close(barrier=False)
        raise
    trainer.close()
    if trainer.rank == 0:
        print(f"trained {summary['iterations']} iterations ({summary['started_at']} resumed) in "
              f"{summary['seconds']} s, {summary['images_per_second']} images/s on {summary['device']} "
              f"x{summary['world_size']}")
        final = summary["final_eval"]
        if final:
            print(trainer.task.table(final))
        print(f"checkpoint: {summary['checkpoint']}; curves: {summary.get('curves')}; "
              f"summary: {trainer.out / 'train_summary.json'}")
    return 0
