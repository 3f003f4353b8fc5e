"""Deformable 3x3 convolution forward + backward: panoptix's grid_sample form
(`sampled_deform_conv3x3`) against torchvision's ``deform_conv2d`` kernel (the peer), same input,
offsets, weights and device, in one run.

Two settings: the deformable semantic head of the tiny CPU recipes (64 channels on P2-P5 of a batch
of 8 images of 192x160) and one P2 map of a COCO-sized batch (2 images, 128 channels, 800x1216 on a
GPU; 400x608 on the CPU so that torchvision's kernel finishes in seconds, said in the output).

    python bench/deform_conv.py [--device cpu|cuda] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torchvision.ops import deform_conv2d

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from panoptix.models.sampled_deform_conv import sampled_deform_conv3x3  # noqa: E402


def settings(device: torch.device) -> dict[str, list[tuple[int, int, int, int]]]:
    """Name -> list of (B, C, H, W) maps, each run through one deformable conv."""
    h, w = (800, 1216) if device.type == "cuda" else (400, 608)
    return {"tiny semantic head P2-P5": [(8, 64, 40 >> i, 48 >> i) for i in range(4)],
            f"COCO P2 {h}x{w}": [(2, 128, h // 4, w // 4)]}


def _forward(impl, x, offset, weight):
    return (deform_conv2d(x, offset, weight, padding=1) if impl == "torchvision"
            else sampled_deform_conv3x3(x, offset, weight))


def _time(impl, maps, device, repeats):
    """Median seconds of forward + backward over ``repeats`` runs (one warm-up)."""
    runs = []
    for i in range(repeats + 1):
        leaves = [[t.detach().requires_grad_(True) for t in m] for m in maps]
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        sum(_forward(impl, *m).square().mean() for m in leaves).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            runs.append(time.perf_counter() - t)
    return statistics.median(runs)


@torch.no_grad()
def _difference(maps) -> float:
    """Largest |sampled - torchvision| over the outputs, relative to torchvision's largest |output|."""
    ref = [_forward("torchvision", *m) for m in maps]
    ours = [_forward("sampled", *m) for m in maps]
    return max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(ours, ref))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "deform_conv.json"))
    args = p.parse_args()
    device = torch.device(args.device)
    rows = []
    for name, shapes in settings(device).items():
        gen = torch.Generator().manual_seed(0)
        maps = [(torch.randn(b, c, h, w, generator=gen).to(device),
                 (torch.randn(b, 18, h, w, generator=gen) * 2).to(device),
                 (torch.randn(c, c, 3, 3, generator=gen) / (3 * c ** 0.5)).to(device)) for b, c, h, w in shapes]
        tv, ours = (_time(impl, maps, device, args.repeats) for impl in ("torchvision", "sampled"))
        rows.append({"setting": name, "device": str(device), "torchvision_s": round(tv, 4),
                     "sampled_s": round(ours, 4), "sampled_over_torchvision": round(ours / tv, 3),
                     "relative_difference": _difference(maps)})
    print(f"deformable conv3x3 forward + backward, median of {args.repeats}, torch threads {torch.get_num_threads()}")
    print(f"{'setting':26s} {'device':6s} {'sampled / torchvision':>22s} {'rel. difference':>16s}")
    for r in rows:
        print(f"{r['setting']:26s} {r['device']:6s} {r['sampled_over_torchvision']:22.3f} "
              f"{r['relative_difference']:16.1e}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
