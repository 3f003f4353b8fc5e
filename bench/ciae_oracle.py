"""CIAE's embeddings with the detector taken out: each checkpoint's PQ as trained, and with the
ground-truth boxes and classes as its detections (the oracle of CIAE, Gao et al. 2021, Table V).

CoordConv, the box embedding and the box filter (Tables VI and VIII) act on the embeddings and on
the merge, not on FCOS's classes. Where a tiny detector misclassifies most things, their effect on
PQ can drown; the oracle shows it on its own. Per image, the network runs once; the oracle replaces
the detections by the ground-truth instances (boxes and classes, score 1), each with the paper's
oracle query: the mean of the predicted pixel embeddings within its ground-truth mask, L2-normalised.
The same merge (`CIAEPanoptic.fuse`) runs on both.

    python bench/ciae_oracle.py --weights runs/sweeps/ciae/ciae/seed_0 runs/sweeps/ciae/no_filter/seed_0 \\
        --data runs/held --images 300
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from diagnostics import checkpoint_arguments, rows_per_checkpoint, write_results  # noqa: E402

from panoptix.data.datasets import PanopticDataset  # noqa: E402
from panoptix.data.targets import build_targets  # noqa: E402
from panoptix.evaluation.panoptic import PanopticEvaluator, percent_row  # noqa: E402
from panoptix.models.systems.ciae import QUERY_FIELD, RawEmbedding  # noqa: E402
from panoptix.structures import Instances  # noqa: E402


def oracle_raw(raw: RawEmbedding, targets: dict[str, torch.Tensor]) -> RawEmbedding:
    """``raw`` with the ground-truth things as its detections; each query is the unit mean of the
    (E, H, W) embeddings within its mask (CIAE, Table V)."""
    masks = targets["masks"].float()                                     # (N, H, W)
    sums = torch.einsum("nhw,ehw->ne", masks, raw.embeddings.float())
    queries = F.normalize(sums, dim=1)
    n = len(masks)
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
