"""How right a teacher's pseudo-labels are, where the images' true labels are known (a synthetic
"unlabelled" set): the share of labelled pixels a pseudo-label keeps (its probability at or above
the threshold), the share of those that name the true category, and the mIoU of the kept labels
(an ignored pixel counts for neither side). Crowd regions count with their category, VOID not at all.

    python bench/pseudo_label_quality.py --truth runs/unlabelled --split train \\
        --labels runs/pseudo/seed_0 runs/pseudo/seed_1 runs/pseudo/seed_2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from diagnostics import write_results  # noqa: E402

from panoptix.data.datasets import PanopticDataset  # noqa: E402


def category_map(sample) -> np.ndarray:
    """(H, W) int64 category id of every pixel of a `PanopticSample`, 0 for VOID."""
    lut = np.zeros(int(sample.ids.max()) + 1, np.int64)
    for seg in sample.segments:
        lut[seg.id] = seg.category_id
    return lut[sample.ids]


def quality(truth: PanopticDataset, labels: Path, split: str) -> dict[str, float]:
    """Coverage, accuracy where kept and mIoU of the kept labels of one pseudo-label folder."""
    from PIL import Image

    cats = list(truth.meta.category_ids)
    k = max(cats) + 1
    conf = np.zeros((k, k), np.int64)   # true category x pseudo-label (0: ignored)
    for i in tqdm(range(len(truth)), desc=labels.name, leave=False):
        sample = truth[i]
        gt = category_map(sample)
        pseudo = np.asarray(Image.open(labels / "annotations" / split / f"{Path(sample.file_name).stem}.png"),
                            np.int64)
        keep = gt > 0
        conf += np.bincount(gt[keep] * k + pseudo[keep], minlength=k * k).reshape(k, k)
    kept = conf[:, 1:].sum()
    ious = [conf[c, c] / max(conf[c, 1:].sum() + conf[1:, c].sum() - conf[c, c], 1) for c in cats]
    return {"kept": kept / max(conf.sum(), 1), "accuracy_kept": np.trace(conf[1:, 1:]) / max(kept, 1),
            "miou_kept": 100 * float(np.mean(ious))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--truth", required=True, help="the images' true labels, COCO's layout")
    ap.add_argument("--split", default="train", help="the split of --truth that was pseudo-labelled")
    ap.add_argument("--labels", nargs="+", required=True, help="pseudo-label folders (panoptix pseudo-label --out)")
    ap.add_argument("--out", default="runs/bench/pseudo_label_quality.json")
    args = ap.parse_args()
    truth = PanopticDataset.synthetic(args.truth, args.split, load_images=False)   # COCO's layout; labels only
    rows = []
    for folder in args.labels:
        record = json.loads((Path(folder) / "pseudo_labels.json").read_text())
        rows.append({"labels": folder, "threshold": record["threshold"],
                     **quality(truth, Path(folder), record["split"])})
    print(f"{'labels':32s} {'threshold':>9s} {'kept':>6s} {'right where kept':>17s} {'mIoU kept':>10s}")
    for r in rows:
        print(f"{r['labels'][-32:]:32s} {r['threshold']:9.2f} {r['kept']:6.3f} {r['accuracy_kept']:17.3f} "
              f"{r['miou_kept']:10.1f}")
    write_results(args.out, {"truth": args.truth, "split": args.split, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
