"""RoIAlign forward + backward: panoptix's matrix-product poolers (dense separable weights, and
one sparse matrix) against torchvision's MultiScaleRoIAlign (the peer), same features, boxes and
device, in one run, with the largest difference of their outputs and feature gradients.

Two settings: the tiny demo recipe (8 images at 192x160 max, 64 FPN channels, 64 sampled RoIs per
image at 7x7 plus 16 mask RoIs at 14x14) and a COCO-sized batch (2 images of 800x1216, 256
channels, 512 RoIs per image), where the dense products lose (their work grows with the map)
and the sparse one does not (on a GPU it is torchvision's kernel).

    python bench/roi_align.py [--device cpu|cuda] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import OrderedDict
from pathlib import Path

import torch
from torchvision.ops import MultiScaleRoIAlign

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from panoptix.models.roi_align import MatmulMultiScaleRoIAlign, SparseMultiScaleRoIAlign  # noqa: E402

LEVELS = ["p2", "p3", "p4", "p5"]
SETTINGS = {  # name: (images, height, width, channels, [(rois per image, output size)], box size range)
    "tiny demo batch": (8, 160, 192, 64, [(64, 7), (16, 14)], (4.0, 64.0)),
    "COCO batch": (2, 800, 1216, 256, [(512, 7), (128, 14)], (16.0, 512.0)),
}


def _boxes(n: int, h: int, w: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    """(n, 4) boxes of side lo..hi (log-uniform) inside an (h, w) image."""
    side = torch.empty(n, 2).uniform_(math.log(lo), math.log(hi), generator=gen).exp()
    xy = torch.rand(n, 2, generator=gen) * (torch.tensor([w, h]) - side).clamp(min=1)
    return torch.cat([xy, xy + side], 1)


def _time(pooler, feats, boxes, shapes, device, repeats):
    """Median seconds of forward + backward over ``repeats`` runs (one warm-up)."""
    runs = []
    for i in range(repeats + 1):
        leaves = OrderedDict((k, v.detach().requires_grad_(True)) for k, v in feats.items())
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = sum(p(leaves, b, shapes).square().sum() for p, b in zip(pooler, boxes))
        out.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def _outputs(pooler, feats, boxes, shapes) -> list[torch.Tensor]:
    """Each pooler's output and the gradient of a fixed function of all outputs w.r.t. every level."""
    leaves = OrderedDict((k, v.detach().requires_grad_(True)) for k, v in feats.items())
    pooled = [p(leaves, b, shapes) for p, b in zip(pooler, boxes)]
    weights = [torch.linspace(-1, 1, o.numel(), device=o.device).view_as(o) for o in pooled]
    grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(pooled, weights)), list(leaves.values()),
                                allow_unused=True, materialize_grads=True)
    return [o.detach() for o in pooled] + list(grads)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "roi_align.json"))
    args = p.parse_args()
    device = torch.device(args.device)
    rows = []
    for name, (images, h, w, c, pools, (lo, hi)) in SETTINGS.items():
        gen = torch.Generator().manual_seed(0)
        feats = OrderedDict((lvl, torch.randn(images, c, h >> (2 + i), w >> (2 + i), generator=gen).to(device))
                            for i, lvl in enumerate(LEVELS))
        boxes = [[_boxes(n, h, w, lo, hi, gen).to(device) for _ in range(images)] for n, _ in pools]
        shapes = [(h, w)] * images
        row = {"setting": name, "device": str(device)}
        reference = None
        for impl, cls in (("torchvision", MultiScaleRoIAlign), ("matmul", MatmulMultiScaleRoIAlign),
                          ("sparse", SparseMultiScaleRoIAlign)):
            poolers = [cls(LEVELS, out, 2) for _, out in pools]
            row[f"{impl}_s"] = round(_time(poolers, feats, boxes, shapes, device, args.repeats), 4)
            outputs = _outputs(poolers, feats, boxes, shapes)
            reference = reference or outputs
            row[f"{impl}_max_diff"] = max((a - b).abs().max().item() for a, b in zip(outputs, reference))
        for impl in ("matmul", "sparse"):
            row[f"{impl}_over_torchvision"] = round(row[f"{impl}_s"] / row["torchvision_s"], 2)
        rows.append(row)
    print(f"RoIAlign forward + backward, median of {args.repeats}, torch threads {torch.get_num_threads()}; "
          "time as a fraction of torchvision's, and the largest difference of outputs and feature gradients")
    print(f"{'setting':18s} {'device':6s} {'matmul / tv':>12s} {'max diff':>9s} {'sparse / tv':>12s} {'max diff':>9s}")
    for r in rows:
        print(f"{r['setting']:18s} {r['device']:6s} {r['matmul_over_torchvision']:12.2f} {r['matmul_max_diff']:9.1e} "
              f"{r['sparse_over_torchvision']:12.2f} {r['sparse_max_diff']:9.1e}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
