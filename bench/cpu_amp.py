"""Training step of a config in float32 against bfloat16 autocast (``solver.cpu_amp``) on the CPU:
the two precisions take turns on the same batches of the config's own data, so the machine's drift
hits both sides of each ratio alike. Prints a table (median s/step, paired speed-up) and writes JSON.

    python bench/cpu_amp.py                                    # panoptic_fpn_tiny on runs/synth, 2 threads
    python bench/cpu_amp.py --config eups_tiny --steps 20 --threads 1 --data runs/synth
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from panoptix.config import load_config  # noqa: E402
from panoptix.engine.build import build_training  # noqa: E402
from panoptix.engine.precision import cpu_has_native_bfloat16, guard_bfloat16_convolutions  # noqa: E402
from panoptix.engine.sampler import stream_loader  # noqa: E402


def paired_steps(config: str, data: str, steps: int) -> dict[str, list[float]]:
    """Seconds of ``steps`` training steps per precision, alternating float32 and bfloat16 (the first
    pair, a warm-up, dropped)."""
    cfg = load_config(config, [f"data.train.root={data}", "data.val.root=", "engine.output_dir=/tmp/panoptix_cpu_amp"])
    trainer = build_training(cfg, progress=False)
    trainer.model.train()
    guard_bfloat16_convolutions(trainer.model)
    batch = trainer.batch_per_rank
    loader = stream_loader(trainer.stream, batch, 0, 2 * steps + 2, 0, 1, 0, 0)
    times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for i, (images, targets) in enumerate(tqdm(loader, total=2 * steps + 2, desc="steps")):
        name = "bfloat16" if i % 2 else "float32"
        trainer.amp, trainer.amp_dtype = name == "bfloat16", torch.bfloat16
        start = time.perf_counter()
        trainer.step(images, targets)
        if i >= 2:
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="panoptic_fpn_tiny")
    p.add_argument("--data", default="runs/synth", help="a synthetic set's root (panoptix synth)")
    p.add_argument("--steps", type=int, default=12, help="steps per precision")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="bench/out/cpu_amp.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    times = paired_steps(args.config, args.data, args.steps)
    ratios = [a / b for a, b in zip(times["float32"], times["bfloat16"])]
    row = {"config": args.config, "threads": args.threads, "native_bfloat16": cpu_has_native_bfloat16(),
           "float32_s": statistics.median(times["float32"]), "bfloat16_s": statistics.median(times["bfloat16"]),
           "paired_speedup": statistics.median(ratios), "times": times}
    print("\n| config | threads | native bf16 | float32 s/step | bfloat16 s/step | paired speed-up |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.config} | {args.threads} | {row['native_bfloat16']} | {row['float32_s']:.3f} | "
          f"{row['bfloat16_s']:.3f} | {row['paired_speedup']:.2f}x |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(row, indent=1))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
