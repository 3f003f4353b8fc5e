"""What OANet's spatial ranking module learned: on the pixels where two or more pasted instances
overlap (the pixels its loss trains on, OANet, Liu et al. 2019, Eq. 2), which ordering puts the
right thing class on top, the ranking scores or the detection scores?

For each held-out image, the instances the merge keeps (score >= its threshold, masks > 0.5) are
stacked; on every pixel two or more of them cover, the top instance under each ordering gives a
class, compared with the ground truth's thing class there (pixels whose truth is stuff or VOID are
not counted). Prints, per checkpoint, the conflicting pixels and each ordering's accuracy on them,
and how often the two orderings disagree; writes JSON beside the table.

It then splits those pixels by what overlaps there: *duplicates*, where the two highest-scoring
covering instances have a mask IoU of 0.5 or more (one object found twice, maybe as two classes),
and *distinct* objects (IoU below 0.5, the occlusion case OANet's ranking is for), with each
ordering's accuracy on each part.

    python bench/srm_conflicts.py --weights runs/sweeps/occlusion/heuristic/seed_0 [more ...] \\
        --data runs/occ_held --images 300
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
from panoptix.data.meta import IGNORE_INDEX  # noqa: E402
from panoptix.data.targets import build_targets  # noqa: E402
from panoptix.fusion.ranking import RANK_FIELD  # noqa: E402


def top_class(masks: torch.Tensor, key: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool masks, (N,) order key, (N,) classes -> (H, W) class of the highest-keyed
    covering instance (-1 where none covers)."""
    order = key.argsort(descending=True, stable=True)
    ranked = masks[order]
    first = ranked.to(torch.uint8).argmax(0)
    return torch.where(ranked.any(0), labels[order][first], torch.full_like(first, -1))


def thing_lut(meta) -> torch.Tensor:
    """(256,) int64: the contiguous thing class of each category index (``semantic_variant: all``), -1 for
    stuff and for IGNORE_INDEX."""
    lut = torch.full((IGNORE_INDEX + 1,), -1, dtype=torch.int64)
    for k, c in enumerate(meta.category_ids):
        if meta.isthing(c):
            lut[k] = meta.thing_contiguous_id[c]
    return lut


def top_two(masks: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W) bool masks, (N,) scores -> (H, W) indices of the highest- and second-highest-scoring
    covering instance (meaningful where two or more cover)."""
    order = scores.argsort(descending=True, stable=True)
    ranked = masks[order].to(torch.uint8)
    first = ranked.argmax(0)
    ranked.scatter_(0, first[None], 0)
    return order[first], order[ranked.argmax(0)]


def mask_iou(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, N) pairwise mask IoU."""
    flat = masks.flatten(1).float()
    inter = flat @ flat.T
    area = flat.sum(1)
    return inter / (area[:, None] + area[None, :] - inter).clamp_min(1)


def conflicts(model, dataset: PanopticDataset, images: int) -> dict[str, float]:
    """Conflicting pixels of ``images`` images and each ordering's accuracy on them, overall and on
    duplicate (IoU >= 0.5) and distinct overlaps."""
    thresh = model.min_instance_score
    counts = {part: [0, 0, 0, 0] for part in ("all", "duplicate", "distinct")}   # pixels, rank ok, score ok, differ
    for i in tqdm(range(min(images, len(dataset))), desc="images", leave=False):
        sample = dataset[i]
        image = torch.from_numpy(sample.image).permute(2, 0, 1).float() / 255
        inst = model.predict_raw([image])[0].instances
        inst = inst[inst.scores >= thresh]
        if len(inst) < 2:
            continue
        masks = inst.masks > 0.5
        conflict = masks.sum(0) >= 2
        truth = build_targets(sample, dataset.meta, "all")["semantic"]   # category index, IGNORE_INDEX for VOID
        gt = thing_lut(dataset.meta)[truth]
        counted = conflict & (gt >= 0)
        by_rank = top_class(masks, inst.extra[RANK_FIELD], inst.labels)
        by_score = top_class(masks, inst.scores, inst.labels)
        first, second = top_two(masks, inst.scores)
        duplicate = mask_iou(masks)[first, second] >= 0.5
        for part, where in (("all", counted), ("duplicate", counted & duplicate), ("distinct", counted & ~duplicate)):
            c = counts[part]
            c[0] += int(where.sum())
            c[1] += int((by_rank == gt)[where].sum())
            c[2] += int((by_score == gt)[where].sum())
            c[3] += int((by_rank != by_score)[where].sum())
    total = counts["all"][0]
    row = {"conflict_pixels": total, "rank_accuracy": counts["all"][1] / max(total, 1),
           "score_accuracy": counts["all"][2] / max(total, 1), "orders_differ": counts["all"][3] / max(total, 1)}
    for part in ("duplicate", "distinct"):
        n, rank_ok, score_ok, differ = counts[part]
        row[part] = {"share": n / max(total, 1), "rank_accuracy": rank_ok / max(n, 1),
                     "score_accuracy": score_ok / max(n, 1), "orders_differ": differ / max(n, 1)}
    return row


def main() -> int:
    args = checkpoint_arguments(__doc__, "checkpoints (or run folders) with a ranking head", 300,
                                "runs/bench/srm_conflicts.json")
    def measure(model, dataset):
        if model.ranking_head is None:
            raise SystemExit(f"a checkpoint of {args.weights} has no ranking head")
        return conflicts(model, dataset, args.images)

    _, rows = rows_per_checkpoint(args, measure)
    print(f"{'checkpoint':50s} {'conflict px':>11s} {'rank acc':>9s} {'score acc':>9s} {'differ':>7s}")
    for r in rows:
        print(f"{r['weights']:50s} {r['conflict_pixels']:11d} {r['rank_accuracy']:9.3f} {r['score_accuracy']:9.3f} "
              f"{r['orders_differ']:7.3f}")
    print(f"\n{'checkpoint':50s} {'part':>9s} {'share':>6s} {'rank acc':>9s} {'score acc':>9s} {'differ':>7s}")
    for r in rows:
        for part in ("duplicate", "distinct"):
            p = r[part]
            print(f"{r['weights']:50s} {part:>9s} {p['share']:6.3f} {p['rank_accuracy']:9.3f} "
                  f"{p['score_accuracy']:9.3f} {p['orders_differ']:7.3f}")
    write_results(args.out, {"data": args.data, "images": args.images, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
