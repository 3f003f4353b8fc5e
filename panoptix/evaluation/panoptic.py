"""Panoptic Quality (PQ/SQ/RQ) over a dataset: COCO panoptic files on disk, or in memory.

- `evaluate_coco_panoptic`: ground-truth JSON + PNG folder against a prediction JSON + PNG
  folder, read as panopticapi reads them (`coco_inputs`), PNG decoding in worker processes,
  memory flat in the number of images. Every check runs on every image; the problems are
  raised together, the oddities panopticapi tolerates are returned as warnings.
- `PanopticEvaluator`: accumulates `PanopticResult`s during training; `all_reduce` merges the
  statistics of all `torch.distributed` ranks.

Figures agree with panopticapi's ``pq_compute`` (see `pq_core` for the rules). This module does
not import torch (the CLI's ``evaluate`` starts without it); `PQStat.all_reduce` imports it.
"""

from __future__ import annotations

import math
import multiprocessing as mp
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from panoptix.data.errors import PanopticFormatError
from panoptix.data.meta import DatasetMeta
from panoptix.data.png import read_id_png
from panoptix.data.sample import PanopticSample
from panoptix.evaluation.allocator import keep_freed_memory
from panoptix.evaluation.coco_inputs import (
    ImagePair,
    pair_images,
    png_path,
    read_annotations,
    read_categories,
    segment_table,
)
from panoptix.evaluation.findings import Finding, raise_on_errors
from panoptix.evaluation.png_runs import file_pair_counts
from panoptix.evaluation.pq_core import SegmentTable, image_pq_stats, pairs_pq_stats

if TYPE_CHECKING:
    from panoptix.structures import PanopticResult

GROUPS = (("All", None), ("Things", True), ("Stuff", False))


class PQStat:
    """Per-category sums over images: IoU of matches, TP, FP, FN (a (4, C) float64 array)."""

    def __init__(self, meta: DatasetMeta, data: np.ndarray | None = None) -> None:
        self.meta = meta
        self.data = np.zeros((4, meta.num_classes), np.float64) if data is None else data

    def __iadd__(self, other: PQStat | np.ndarray) -> PQStat:
        self.data += other.data if isinstance(other, PQStat) else other
        return self

    def all_reduce(self) -> PQStat:
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
        ``per_class`` -> {category id: ``name, isthing, pq, sq, rq, tp, fp, fn``}.

        Averages run over the categories with at least one TP, FP or FN. A group with none of
        them (for example Stuff in a dataset without stuff) has NaN averages and ``n = 0``
        (panopticapi divides by zero there).
        """
        iou, tp, fp, fn = self.data
        per_class: dict[int, dict[str, float]] = {}
        for k, cat in enumerate(self.meta.categories):
            denom = tp[k] + 0.5 * fp[k] + 0.5 * fn[k]
            named = {"name": cat.name, "isthing": bool(cat.isthing)}
            if tp[k] + fp[k] + fn[k] == 0:
                per_class[cat.id] = {**named, "pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 0}
                continue
            per_class[cat.id] = {**named, "pq": iou[k] / denom, "sq": iou[k] / tp[k] if tp[k] else 0.0,
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
        self.warnings: list[str] = []

    def add(self, gt: PanopticSample, pred: PanopticResult) -> None:
        """Add one image. Raises `PanopticFormatError` when the prediction and its segments disagree."""
        where = f"image {gt.image_id!r}"
        pred_map = pred.ids_numpy()
        gt_table = _table(gt.segments, self.meta, f"{where} (ground truth)", ground_truth=True)
        pred_table = _table(pred.segments, self.meta, f"{where} (prediction)", ground_truth=False)
        stats, findings = image_pq_stats(gt.ids, gt_table, pred_map, pred_table, self.meta.num_classes)
        self.warnings += raise_on_errors([Finding(sev, f"{where} ({side})", text) for sev, side, text in findings],
                                         strict=False)
        self.stat += stats
        self.num_images += 1

    def all_reduce(self) -> PanopticEvaluator:
        self.stat.all_reduce()
        return self

    def summary(self) -> dict[str, Any]:
        return self.stat.summary()


def _table(segments: Iterable, meta: DatasetMeta, where: str, ground_truth: bool) -> SegmentTable:
    """Segments (``Segment`` or ``SegmentInfo``) of an in-memory sample or result as a table."""
    segs = list(segments)
    unknown = [s.category_id for s in segs if s.category_id not in meta]
    if unknown:
        raise PanopticFormatError(f"{where}: category id(s) {unknown[:10]} are not in the categories")
    ids = [s.id for s in segs]
    if len(set(ids)) != len(ids):
        raise PanopticFormatError(f"{where}: segment ids repeat: {sorted(ids)[:20]}")
    cats = [meta.contiguous_id[s.category_id] for s in segs]
    if ground_truth:
        return SegmentTable.build(ids, cats, [s.iscrowd for s in segs], [s.area for s in segs])
    return SegmentTable.build(ids, cats)


# --------------------------------------------------------------------------- files on disk
@dataclass
class _FileSet:
    """What every image task needs: the categories, the folders, the pairs (inherited by workers)."""

    meta: DatasetMeta
    gt_json: Path
    gt_dir: Path
    pred_json: Path
    pred_dir: Path
    pairs: list[ImagePair]


def _decode(path: Path | None, where: str, findings: list[Finding]) -> np.ndarray | None:
    if path is None:
        return None
    try:
        return read_id_png(path)
    except PanopticFormatError as err:
        findings.append(Finding("error", where, str(err).removeprefix(f"{path}: ")))
        return None


def _evaluate_pair(files: _FileSet, pair: ImagePair) -> tuple[np.ndarray | None, list[Finding]]:
    """Parse, decode and score one image; all its checks run, whatever the others find."""
    findings: list[Finding] = []
    gt_where = f"{files.gt_json}: image {pair.image_id!r}"
    pred_where = f"{files.pred_json}: image {pair.image_id!r}"
    gt = segment_table(pair.gt.get("segments_info"), files.meta, gt_where, findings, ground_truth=True)
    pred = segment_table(pair.pred.get("segments_info"), files.meta, pred_where, findings, ground_truth=False)
    gt_png = png_path(files.gt_dir, pair.gt.get("file_name"), gt_where, findings)
    pred_png = png_path(files.pred_dir, pair.pred.get("file_name"), pred_where, findings)
    labels = {"gt": f"{gt_png} (image {pair.image_id!r})", "pred": f"{pred_png} (image {pair.image_id!r})"}
    counts = file_pair_counts(gt_png, pred_png) if gt is not None and pred is not None and gt_png and pred_png else None
    if counts is not None:
        stats, core = pairs_pq_stats(*counts, gt, pred, files.meta.num_classes)
    else:
        gt_map = _decode(gt_png, labels["gt"], findings)
        pred_map = _decode(pred_png, labels["pred"], findings)
        if gt is None or pred is None or gt_map is None or pred_map is None:
            return None, findings
        stats, core = image_pq_stats(gt_map, gt, pred_map, pred, files.meta.num_classes)
    findings += [Finding(sev, labels[side], text) for sev, side, text in core]
    return (None if any(f.severity == "error" for f in findings) else stats), findings


def _evaluate_chunk(files: _FileSet, indices: Sequence[int]) -> tuple[np.ndarray, int, list[Finding]]:
    """Summed statistics, image count and findings of some pairs."""
    total = np.zeros((4, files.meta.num_classes), np.float64)
    findings: list[Finding] = []
    for i in indices:
        stats, found = _evaluate_pair(files, files.pairs[i])
        findings += found
        if stats is not None:
            total += stats
    return total, len(indices), findings


_WORKER_FILES: _FileSet | None = None   # set once in each worker process by `_init_worker`


def _init_worker(files: _FileSet) -> None:
    global _WORKER_FILES
    _WORKER_FILES = files
    keep_freed_memory()


def _worker_chunk(indices: Sequence[int]) -> tuple[np.ndarray, int, list[Finding]]:
    assert _WORKER_FILES is not None
    return _evaluate_chunk(_WORKER_FILES, indices)


def evaluate_coco_panoptic(gt_json: str | Path, pred_json: str | Path, gt_dir: str | Path | None = None,
                           pred_dir: str | Path | None = None, workers: int = 1, progress: bool = False,
                           strict: bool = False) -> dict[str, Any]:
    """PQ of a COCO panoptic prediction set against its ground truth, as panopticapi computes it.

    Args:
        gt_json, pred_json: annotation JSONs; the categories come from ``gt_json``.
        gt_dir, pred_dir: PNG folders (default: the JSON path without ``.json``, like panopticapi).
        workers: processes decoding PNGs; 1 works in this process.
        progress: show a tqdm bar.
        strict: treat the oddities panopticapi tolerates (see `coco_inputs`) as errors.
    Returns:
        `PQStat.summary` plus ``num_images`` and ``warnings`` (one line each, naming the file and
        segment; at most 1000 kept, ``num_warnings`` counts them all).
    Raises:
        PanopticFormatError: files that cannot be read at all (JSON, folders); `PanopticInputError`
            listing every problem found in any image, once all images were checked.
    """
    gt_json, pred_json = Path(gt_json), Path(pred_json)
    findings: list[Finding] = []
    gt_data = read_annotations(gt_json)
    meta = read_categories(gt_data, gt_json, findings)
    pred_data = read_annotations(pred_json)
    files = _FileSet(meta, gt_json, _folder(gt_dir, gt_json, "ground-truth"), pred_json,
                     _folder(pred_dir, pred_json, "prediction"), [])
    files.pairs = pair_images(gt_json, gt_data, pred_json, pred_data, findings)
    del gt_data, pred_data
    stat = PQStat(meta)
    for stats, _, found in _run(files, workers, progress):
        stat += stats
        findings += found
    warnings = raise_on_errors(findings, strict)
    out = stat.summary()
    out["num_images"] = len(files.pairs)
    out["warnings"] = warnings[:1000]
    out["num_warnings"] = len(warnings)
    return out


def _folder(folder: str | Path | None, json_path: Path, what: str) -> Path:
    folder = Path(folder) if folder is not None else json_path.with_suffix("")
    if not folder.is_dir():
        raise PanopticFormatError(f"{folder}: {what} PNG folder not found")
    return folder


def _run(files: _FileSet, workers: int, progress: bool) -> Iterator[tuple[np.ndarray, int, list[Finding]]]:
    from tqdm import tqdm

    n = len(files.pairs)
    chunk = max(1, min(16, n // (max(workers, 1) * 4)))
    chunks = [range(i, min(i + chunk, n)) for i in range(0, n, chunk)]
    bar = tqdm(total=n, desc="PQ", unit="img", disable=not progress)
    if workers <= 1 or len(chunks) < 2:
        for c in chunks:
            yield _evaluate_chunk(files, c)
            bar.update(len(c))
    else:
        # fork: the workers inherit `files` as it is; spawn pickles it once per worker.
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(min(workers, len(chunks)), initializer=_init_worker, initargs=(files,)) as pool:
            # imap, not imap_unordered: chunks are summed in a fixed order, so a re-run gives the same floats
            for result in pool.imap(_worker_chunk, chunks):
                yield result
                bar.update(result[1])
    bar.close()


def percent_row(results: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of a PQ result in percent: PQ, SQ, RQ over all classes, PQ_th, PQ_st."""
    return {"PQ": 100 * results["All"]["pq"], "SQ": 100 * results["All"]["sq"], "RQ": 100 * results["All"]["rq"],
            "PQ_th": 100 * results["Things"]["pq"], "PQ_st": 100 * results["Stuff"]["pq"]}


def format_per_class(results: dict[str, Any]) -> str:
    """One row per category (mmdetection's ``classwise``): name, thing or stuff, PQ / SQ / RQ in percent
    and the TP / FP / FN counts; things first, then stuff, each by name. Categories absent from both
    sides are left out."""
    rows = [r for r in results["per_class"].values() if r["tp"] + r["fp"] + r["fn"] > 0]
    rows.sort(key=lambda r: (not r["isthing"], str(r["name"])))
    width = max([len(str(r["name"])) for r in rows] + [8])
    lines = [f"{'category':{width}s}  kind   {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s} {'TP':>5s} {'FP':>5s} {'FN':>5s}"]
    lines += [f"{str(r['name']):{width}s}  {'thing' if r['isthing'] else 'stuff'}  {100 * r['pq']:5.1f}  "
              f"{100 * r['sq']:5.1f}  {100 * r['rq']:5.1f} {r['tp']:5d} {r['fp']:5d} {r['fn']:5d}" for r in rows]
    return "\n".join(lines)


def format_table(results: dict[str, Any]) -> str:
    """The PQ table as panopticapi prints it (percentages)."""
    lines = [f"{'':10s}| {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s} {'N':>5s}", "-" * 38]
    for name, _ in GROUPS:
        r = results[name]
        lines.append(f"{name:10s}| {100 * r['pq']:5.1f}  {100 * r['sq']:5.1f}  {100 * r['rq']:5.1f} {r['n']:5d}")
    return "\n".join(lines)
