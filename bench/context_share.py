"""What DANet's attention learned in a trained scene parser (Fu et al. 2019, as AinnoSeg uses it): each
branch adds gamma * attention(x) to its input x, with gamma starting at 0, so a branch whose gamma
stayed near 0 leaves the features as they were and the head acts as OCR alone.

For each checkpoint, prints both gammas and, over held-out images, the mean relative change a branch
makes to its input, ||out - x|| / ||x||; writes JSON beside the table.

    python bench/context_share.py --weights runs/sweeps/ainnoseg/danet_ocr/seed_0 [more ...] \\
        --data runs/held --images 50
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from diagnostics import checkpoint_arguments, rows_per_checkpoint, write_results  # noqa: E402

from panoptix.data.datasets import PanopticDataset  # noqa: E402

BRANCHES = ("pam", "cam")  # DANet's position and channel attention modules


def branch_changes(model, dataset: PanopticDataset, images: int) -> dict[str, float]:
    """Each branch's gamma and mean ||out - x|| / ||x|| over the first ``images`` images."""
    context = getattr(model, "context", None)
    if context is None or not all(hasattr(context, b) for b in BRANCHES):
        raise SystemExit(f"{type(model).__name__} has no DANet context head (model.context with pam and cam)")
    changes: dict[str, list[float]] = {b: [] for b in BRANCHES}

    def hook(name: str):
        def record(module, inputs, output):
            x = inputs[0]
            changes[name].append(((output - x).norm() / x.norm().clamp_min(1e-12)).item())
        return record

    handles = [getattr(context, b).register_forward_hook(hook(b)) for b in BRANCHES]
    n = min(images, len(dataset))
    with torch.no_grad():
        for i in tqdm(range(n), desc="images", leave=False):
            model([dataset[i].image])
    for h in handles:
        h.remove()
    row = {f"{b}_gamma": getattr(context, b).gamma.item() for b in BRANCHES}
    row.update({f"{b}_change": sum(changes[b]) / n for b in BRANCHES})
    return row


def main() -> int:
    args = checkpoint_arguments(__doc__, "checkpoints or run folders of a DANet scene parser", 50,
                                "runs/bench/context_share.json")
    dataset, rows = rows_per_checkpoint(args, lambda model, data: branch_changes(model, data, args.images))
    print(f"DANet's branches on {min(args.images, len(dataset))} images of {args.data}:")
    print(f"{'weights':48s} {'gamma PAM':>10s} {'gamma CAM':>10s} {'PAM change':>11s} {'CAM change':>11s}")
    for r in rows:
        print(f"{r['weights'][-48:]:48s} {r['pam_gamma']:+10.4f} {r['cam_gamma']:+10.4f} "
              f"{r['pam_change']:11.3f} {r['cam_change']:11.3f}")
    write_results(args.out, {"data": args.data, "images": args.images, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
