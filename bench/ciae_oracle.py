"""CIAE's embeddings with the detector taken out: each checkpoint's PQ as trained, and with the
ground-truth boxes and classes as its detections (the oracle of CIAE, Gao et al. 2021, Table V).

CoordConv, the box embedding and the box filter (Tables VI and VIII) act on the embeddings and on
the merge, not on FCOS's classes. Where a tiny detector misclassifies most things, their effect on
PQ can drown; the oracle shows it on its own. Per image, the network runs once; the oracle replaces
the detections by the ground-truth instances, each with its query embedding read at the mask pixel
nearest the mask's centroid (a location inside the object, where FCOS's centre sampling puts its
positives), score 1, and the same merge (`CIAEPanoptic.fuse`) runs on both.

    python bench/ciae_oracle.py --weights runs/sweeps/ciae/ciae/seed_0 runs/sweeps/ciae/no_filter/seed_0 \\
        --data runs/held --images 300
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
from panoptix.data.targets import build_targets  # noqa: E402
from panoptix.evaluation.panoptic import PanopticEvaluator, percent_row  # noqa: E402
from panoptix.models.systems.ciae import QUERY_FIELD, RawEmbedding  # noqa: E402
from panoptix.structures import Instances  # noqa: E402


def inner_points(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool masks -> (N, 2) (y, x) of each mask's pixel nearest its centroid."""
    h, w = masks.shape[-2:]
    ys = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    xs = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    m = masks.float()
    area = m.sum((1, 2)).clamp(min=1)
    cy, cx = (m * ys).sum((1, 2)) / area, (m * xs).sum((1, 2)) / area
    dist = (ys[None] - cy[:, None, None]) ** 2 + (xs[None] - cx[:, None, None]) ** 2
    flat = torch.where(masks, dist, torch.full_like(dist, float("inf"))).flatten(1).argmin(1)
    return torch.stack([flat // w, flat % w], 1)


def oracle_raw(raw: RawEmbedding, targets: dict[str, torch.Tensor]) -> RawEmbedding:
    """``raw`` with the ground-truth things as its detections."""
    points = inner_points(targets["masks"].bool())
    queries = raw.embeddings[:, points[:, 0], points[:, 1]].T
    n = len(points)
    inst = Instances(boxes=targets["boxes"].float(), scores=torch.ones(n), labels=targets["labels"].long(),
                     image_size=tuple(raw.embeddings.shape[-2:]), extra={QUERY_FIELD: queries})
    return RawEmbedding(inst, raw.embeddings)


def score(model, dataset: PanopticDataset, images: int) -> dict[str, float]:
    """PQ / PQ_th / PQ_st of the model as trained and with the oracle detections, in percent."""
    trained, oracle = PanopticEvaluator(dataset.meta), PanopticEvaluator(dataset.meta)
    for i in tqdm(range(min(images, len(dataset))), desc="images", leave=False):
        sample = dataset[i]
        image = torch.from_numpy(sample.image).permute(2, 0, 1).float() / 255
        raw = model.predict_raw([image])[0]
        trained.add(sample, model.fuse(raw))
        configured, model.instance_category = model.instance_category, "detector"   # classes: the ground truth's
        oracle.add(sample, model.fuse(oracle_raw(raw, build_targets(sample, dataset.meta))))
        model.instance_category = configured
    out = {}
    for name, ev in (("trained", trained), ("oracle", oracle)):
        row = percent_row(ev.summary())
        out.update({f"{name}_{k}": row[k] for k in ("PQ", "PQ_th", "PQ_st")})
    return out


def main() -> None:
    args = checkpoint_arguments(__doc__, "CIAE run folders or checkpoints", 300, "bench/out/ciae_oracle.json")
    dataset, rows = rows_per_checkpoint(args, lambda model, data: score(model, data, args.images))
    print(f"\n{min(args.images, len(dataset))} images of {args.data} ({args.split})")
    print(f"{'weights':48s} {'PQ':>6s} {'PQ_th':>6s} {'PQ_st':>6s} | oracle {'PQ':>6s} {'PQ_th':>6s} {'PQ_st':>6s}")
    for r in rows:
        print(f"{r['weights']:48s} {r['trained_PQ']:6.1f} {r['trained_PQ_th']:6.1f} {r['trained_PQ_st']:6.1f} | "
              f"       {r['oracle_PQ']:6.1f} {r['oracle_PQ_th']:6.1f} {r['oracle_PQ_st']:6.1f}")
    write_results(args.out, {"data": args.data, "split": args.split, "images": args.images, "rows": rows})


if __name__ == "__main__":
    main()
