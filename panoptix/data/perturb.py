"""Perturbed copies of ground truth: realistic-looking wrong predictions for tests and benchmarks.

Each segment may be shifted (boundary error), dropped (false negative), relabelled (class
confusion), split in two (over-segmentation) or merged with a same-category neighbour; extra
false-positive blobs are added and crowd flags are removed, as a prediction has none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from panoptix.data.formats import load_coco_panoptic, read_sample, write_coco_panoptic
from panoptix.data.meta import DatasetMeta
from panoptix.data.sample import PanopticSample, bbox_of_mask, map_ids


def perturb_sample(sample: PanopticSample, meta: DatasetMeta, rng: np.random.Generator,
                   strength: float = 1.0) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """A wrong-but-plausible prediction for one sample.

    Returns:
        ids (H, W) int32 with fresh segment ids, and ``segments_info`` dicts (id, category_id,
        iscrowd=0, bbox, area) listing exactly the ids present.
    """
    h, w = sample.ids.shape
    pred = np.array(sample.ids, dtype=np.int64, copy=True)
    cats = {s.id: s.category_id for s in sample.segments}
    next_id = max(cats, default=0) + 1
    p = min(1.0, strength)
    for seg in sample.segments:
        mask = pred == seg.id
        u = rng.random()
        if u < 0.08 * p:                                    # drop: becomes VOID
            pred[mask] = 0
            del cats[seg.id]
            continue
        if u < 0.16 * p:                                    # class confusion within things / stuff
            pool = meta.thing_ids if meta.isthing(seg.category_id) else meta.stuff_ids
            cats[seg.id] = int(rng.choice(pool))
        if rng.random() < 0.5 * p:                          # boundary error: shift the segment
            dy, dx = rng.integers(-3, 4, size=2)
            shifted = np.roll(mask, (int(dy), int(dx)), axis=(0, 1))
            pred[shifted] = seg.id
        if rng.random() < 0.1 * p and seg.area > 40:        # split along the bbox middle
            x, y, bw, bh = seg.bbox
            half = pred == seg.id
            cut = (np.arange(w)[None, :] >= x + bw // 2) if bw >= bh else (np.arange(h)[:, None] >= y + bh // 2)
            pred[half & cut] = next_id
            cats[next_id] = cats[seg.id]
            next_id += 1
    for _ in range(int(rng.poisson(1.0 * p))):              # false-positive blobs
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        r = rng.integers(3, max(4, min(h, w) // 6))
        yy, xx = np.ogrid[:h, :w]
        pred[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = next_id
        cats[next_id] = int(rng.choice([c.id for c in meta.categories]))
        next_id += 1
    # Fresh ids in a scrambled order, so that evaluation cannot rely on gt and pred sharing ids.
    present = np.unique(pred)
    present = present[present != 0]
    new_ids = rng.permutation(np.arange(1, len(present) + 1)) * 97 + 1000
    remap = dict(zip(present.tolist(), new_ids.tolist()))
    out = map_ids(pred, present, new_ids, fill=0).astype(np.int32)
    segments = []
    for old, new in remap.items():
        m = out == new
        segments.append({"id": int(new), "category_id": int(cats[old]), "iscrowd": 0,
                         "bbox": list(bbox_of_mask(m)), "area": int(m.sum())})
    return out, segments


def write_perturbed(gt_json: str | Path, gt_dir: str | Path, out_json: str | Path, out_dir: str | Path,
                    seed: int = 0, strength: float = 1.0, limit: int | None = None) -> int:
    """Write a perturbed copy of a COCO panoptic ground truth as a prediction set; returns #images."""
    meta, records = load_coco_panoptic(gt_json, gt_dir)
    records = records[:limit] if limit else records
    rng = np.random.default_rng(seed)

    def entries():
        for rec in records:
            sample = read_sample(rec, meta, load_image=False, validate=False)
            ids, segs = perturb_sample(sample, meta, rng, strength)
            yield rec.image_id, Path(rec.png_path).name, ids, segs

    write_coco_panoptic(out_json, out_dir, meta, entries())
    return len(records)
