"""Panoptic Quality (PQ/SQ/RQ) over a dataset: COCO panoptic files on disk, or in memory.

- `evaluate_coco_panoptic`: ground-truth JSON + PNG folder against a prediction JSON + PNG
  folder, PNG decoding in worker processes, memory flat in the number of images.
- `PanopticEvaluator`: accumulates `PanopticResult`s during training; `all_reduce` merges the
  statistics of all `torch.distributed` ranks.

Figures agree with panopticapi's ``pq_compute`` (see `pq_core` for the rules).
"""

from __future__ import annotations

import math
import multiprocessing as mp
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np

from panoptix.data.errors import PanopticFormatError
from panoptix.data.formats import load_coco_panoptic, load_json
from panoptix.data.meta import DatasetMeta
from panoptix.data.png import read_id_png
from panoptix.data.sample import PanopticSample
from panoptix.data.validation import check_json_segments, resolve_inside
from panoptix.evaluation.pq_core import SegmentTable, image_pq_stats
from panoptix.structures import PanopticResult

GROUPS = (("All", None), ("Things", True), ("Stuff", False))


class PQStat:
    """Per-category sums over images: IoU of matches, TP, FP, FN (a (4, C) float64 array)."""

    def __init__(self, meta: DatasetMeta, data: Optional[np.ndarray] = None) -> None:
        self.meta = meta
        self.data = np.zeros((4, meta.num_classes), np.float64) if data is None else data

    def __iadd__(self, other: "PQStat | np.ndarray") -> "PQStat":
        self.data += other.data if isinstance(other, PQStat) else other
        return self

    def all_reduce(self) -> "PQStat":
        """Sum the statistics of all ranks in place (no-op outside `torch.distributed`)."""
        import torch
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            backend = dist.get_backend()
            device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
            t = torch.from_numpy(self.data).to(device)
            dist.all_reduce(t)
            self.data = t.cpu().numpy()
        return self

    def summary(self) -> dict[str, Any]:
        """panopticapi's result layout: ``All``/``Things``/``Stuff`` -> ``pq, sq, rq, n`` and
        ``per_class`` -> {category id: ``pq, sq, rq, tp, fp, fn``}.

        Averages run over the categories with at least one TP, FP or FN. A group with none of
        them (for example Stuff in a dataset without stuff) has NaN averages and ``n = 0``
        (panopticapi divides by zero there).
        """
        iou, tp, fp, fn = self.data
        per_class: dict[int, dict[str, float]] = {}
        for k, cat in enumerate(self.meta.categories):
            denom = tp[k] + 0.5 * fp[k] + 0.5 * fn[k]
            if tp[k] + fp[k] + fn[k] == 0:
                per_class[cat.id] = {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 0}
                continue
            per_class[cat.id] = {"pq": iou[k] / denom, "sq": iou[k] / tp[k] if tp[k] else 0.0,
                                 "rq": tp[k] / denom, "tp": int(tp[k]), "fp": int(fp[k]), "fn": int(fn[k])}
        results: dict[str, Any] = {}
        for name, isthing in GROUPS:
            keys = [c.id for k, c in enumerate(self.meta.categories)
                    if (isthing is None or c.isthing == isthing) and tp[k] + fp[k] + fn[k] > 0]
            n = len(keys)
            avg = {m: (sum(per_class[c][m] for c in keys) / n if n else math.nan) for m in ("pq", "sq", "rq")}
            results[name] = {**avg, "n": n}
        results["per_class"] = per_class
        return results


# --------------------------------------------------------------------------- in memory
class PanopticEvaluator:
    """Accumulates PQ over (ground truth, prediction) pairs held in memory.

    Usage during training::

        ev = PanopticEvaluator(meta)
        for sample, result in zip(samples, results):
            ev.add(sample, result)
        summary = ev.all_reduce().summary()
    """

    def __init__(self, meta: DatasetMeta) -> None:
        self.meta = meta
        self.stat = PQStat(meta)
        self.num_images = 0

    def add(self, gt: PanopticSample, pred: PanopticResult) -> None:
        where = f"image {gt.image_id!r}"
        pred_map = pred.ids_numpy()
        if pred_map.size and (pred_map.min() < 0 or pred_map.max() >= 1 << 24):
            raise PanopticFormatError(f"{where}: prediction segment ids must lie in [0, 2^24)")
        gt_table = _gt_table(gt.segments, self.meta, where)
        pred_table = _pred_table([{"id": s.id, "category_id": s.category_id} for s in pred.segments],
                                 self.meta, where)
        self.stat += image_pq_stats(gt.ids, gt_table, pred_map, pred_table, self.meta.num_classes, where)
        self.num_images += 1

    def all_reduce(self) -> "PanopticEvaluator":
        self.stat.all_reduce()
        return self

    def summary(self) -> dict[str, Any]:
        return self.stat.summary()


def _gt_table(segments: Iterable, meta: DatasetMeta, where: str) -> SegmentTable:
    segs = list(segments)
    unknown = [s.category_id for s in segs if s.category_id not in meta]
    if unknown:
        raise PanopticFormatError(f"{where}: ground-truth category id(s) {unknown[:10]} are not in the categories")
    return SegmentTable.build([s.id for s in segs], [meta.contiguous_id[s.category_id] for s in segs],
                              [s.iscrowd for s in segs], [s.area for s in segs])


def _pred_table(segments_info: Sequence[dict], meta: DatasetMeta, where: str) -> SegmentTable:
    segs = check_json_segments(list(segments_info), meta, where)
    return SegmentTable.build([s.id for s in segs], [meta.contiguous_id[s.category_id] for s in segs])


# --------------------------------------------------------------------------- files on disk
def _image_task(task: tuple) -> np.ndarray:
    gt_png, gt_table, pred_png, pred_table, num_categories, where = task
    return image_pq_stats(read_id_png(gt_png), gt_table, read_id_png(pred_png), pred_table, num_categories, where)


def _tasks(gt_json: Path, gt_dir: Optional[Path], pred_json: Path, pred_dir: Optional[Path]
           ) -> tuple[DatasetMeta, list[tuple]]:
    meta, gt_records = load_coco_panoptic(gt_json, gt_dir)
    pred_data = load_json(pred_json)
    if not isinstance(pred_data, dict) or not isinstance(pred_data.get("annotations"), list):
        raise PanopticFormatError(f"{pred_json}: expected a JSON object with an 'annotations' list")
    pred_dir = Path(pred_dir) if pred_dir is not None else pred_json.with_suffix("")
    if not pred_dir.is_dir():
        raise PanopticFormatError(f"{pred_dir}: prediction PNG folder not found")
    preds: dict[Any, dict] = {}
    for i, ann in enumerate(pred_data["annotations"]):
        if not isinstance(ann, dict) or any(k not in ann for k in ("image_id", "file_name", "segments_info")):
            raise PanopticFormatError(f"{pred_json}: annotation #{i} lacks image_id, file_name or segments_info")
        if ann["image_id"] in preds:
            raise PanopticFormatError(f"{pred_json}: image_id {ann['image_id']!r} is predicted twice")
        preds[ann["image_id"]] = ann
    missing = [r.image_id for r in gt_records if r.image_id not in preds]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise PanopticFormatError(f"{pred_json}: no prediction for {len(missing)} ground-truth image(s): {shown}{more}")
    tasks = []
    for rec in gt_records:
        ann = preds[rec.image_id]
        where = f"{pred_json}: image {rec.image_id!r}"
        pred_png = resolve_inside(pred_dir, ann["file_name"], where)
        if not pred_png.is_file():
            raise PanopticFormatError(f"{where}: prediction PNG {pred_png} not found")
        tasks.append((rec.png_path, _gt_table(rec.segments, meta, f"{gt_json}: image {rec.image_id!r}"),
                      pred_png, _pred_table(ann["segments_info"], meta, where), meta.num_classes,
                      f"{pred_png} (image {rec.image_id!r})"))
    return meta, tasks


def evaluate_coco_panoptic(gt_json: str | Path, pred_json: str | Path, gt_dir: str | Path | None = None,
                           pred_dir: str | Path | None = None, workers: int = 1,
                           progress: bool = False) -> dict[str, Any]:
    """PQ of a COCO panoptic prediction set against its ground truth.

    Args:
        gt_json, pred_json: annotation JSONs; the categories come from ``gt_json``.
        gt_dir, pred_dir: PNG folders (default: the JSON path without ``.json``, like panopticapi).
        workers: processes decoding PNGs; 1 works in this process.
        progress: show a tqdm bar.
    Returns:
        `PQStat.summary` plus ``num_images``.
    """
    gt_json, pred_json = Path(gt_json), Path(pred_json)
    meta, tasks = _tasks(gt_json, Path(gt_dir) if gt_dir else None, pred_json, Path(pred_dir) if pred_dir else None)
    stat = PQStat(meta)
    for stats in _run(tasks, workers, progress):
        stat += stats
    out = stat.summary()
    out["num_images"] = len(tasks)
    return out


def _run(tasks: list[tuple], workers: int, progress: bool) -> Iterator[np.ndarray]:
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc="PQ", unit="img", disable=not progress)
    if workers <= 1 or len(tasks) < 2:
        for t in tasks:
            yield _image_task(t)
            bar.update()
    else:
        chunk = max(1, min(16, len(tasks) // (workers * 4)))
        with mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn").Pool(workers) as pool:
            for stats in pool.imap_unordered(_image_task, tasks, chunksize=chunk):
                yield stats
                bar.update()
    bar.close()


def format_table(results: dict[str, Any]) -> str:
    """The PQ table as panopticapi prints it (percentages)."""
    lines = [f"{'':10s}| {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s} {'N':>5s}", "-" * 38]
    for name, _ in GROUPS:
        r = results[name]
        lines.append(f"{name:10s}| {100 * r['pq']:5.1f}  {100 * r['sq']:5.1f}  {100 * r['rq']:5.1f} {r['n']:5d}")
    return "\n".join(lines)
