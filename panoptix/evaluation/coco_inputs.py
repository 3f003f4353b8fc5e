"""A COCO panoptic ground truth and prediction set, read as panopticapi's ``pq_compute`` reads them.

Whatever ``pq_compute`` accepts is accepted and means what it means there; the oddities it
tolerates become warnings (errors under ``strict``), what it rejects becomes an error:

- categories: a repeated id keeps its last entry; ``isthing`` other than 0/1 counts as stuff
  unless it equals 1 (``True``);
- ``segments_info``: a repeated segment id keeps its last entry; id 0 is an ordinary segment (see
  `pq_core`); ground-truth ``iscrowd`` is crowd only when it equals 1; a ground-truth segment
  without ``area`` takes its PNG pixel count (panopticapi would fail on it, or never read it);
  a ground-truth segment with no ``iscrowd`` is not crowd; a ground-truth category the
  categories do not list counts towards no average;
- annotations: a repeated prediction ``image_id`` keeps the last one; a repeated ground-truth
  ``image_id`` is evaluated each time; predictions for images not in the ground truth are
  ignored; a ``file_name`` that leaves its folder is read where it points (``os.path.join``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from panoptix.data.errors import PanopticFormatError
from panoptix.data.meta import DatasetMeta
from panoptix.evaluation.findings import Finding, shown
from panoptix.evaluation.pq_core import SegmentTable
from panoptix.jsonio import load_json


def _as_int(v: Any) -> int | None:
    """``v`` as an int when it is an integral number (JSON may write 3 as 3.0), else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return int(v)
    return None


def read_categories(data: dict, path: Path, findings: list[Finding]) -> DatasetMeta:
    """The ground truth's categories, panopticapi's way (see the module docstring)."""
    records = data.get("categories")
    if not isinstance(records, list) or not records:
        raise PanopticFormatError(f"{path}: expected a non-empty 'categories' list")
    by_id: dict[int, dict] = {}
    repeated, odd_isthing = [], []
    for i, rec in enumerate(records):
        cid = _as_int(rec.get("id")) if isinstance(rec, dict) else None
        if cid is None or "isthing" not in rec:
            raise PanopticFormatError(f"{path}: category #{i} needs an integer 'id' and 'isthing': {rec!r}")
        if cid in by_id:
            repeated.append(cid)
        by_id[cid] = rec
    cats = []
    for cid, rec in by_id.items():
        if rec["isthing"] not in (0, 1):
            odd_isthing.append(cid)
        cats.append({**rec, "id": cid, "name": str(rec.get("name", f"category_{cid}")),
                     "isthing": int(rec["isthing"] == 1)})
    if repeated:
        findings.append(Finding("warning", str(path), f"category id(s) {shown(repeated)} are listed more than "
                                                      "once; the last entry of each is used (as in panopticapi)"))
    if odd_isthing:
        findings.append(Finding("warning", str(path), f"category id(s) {shown(odd_isthing)} have 'isthing' other "
                                                      "than 0 or 1; only isthing == 1 is a thing (as in panopticapi)"))
    return DatasetMeta.from_categories(cats, name=str(path))


def segment_table(segments_info: Any, meta: DatasetMeta, where: str, findings: list[Finding],
                  ground_truth: bool) -> SegmentTable | None:
    """One image's ``segments_info`` as a `SegmentTable`; None when it is not a list.

    A segment whose category is unknown or malformed gets category index ``meta.num_classes``:
    an error in a prediction, a warning in the ground truth. A segment without an integer id is
    an error and left out.
    """
    side = "ground-truth" if ground_truth else "prediction"
    if not isinstance(segments_info, list):
        findings.append(Finding("error", where, f"{side} 'segments_info' must be a list"))
        return None
    by_id = _segments_by_id(segments_info, side, where, findings)
    unknown_index = meta.num_classes
    ids, cats, crowd, area = [], [], [], []
    unknown, no_crowd, no_area = [], [], []
    for sid, rec in by_id.items():
        cid = _as_int(rec["category_id"])
        known = cid is not None and cid in meta
        if not known:
            unknown.append((sid, rec["category_id"]))
        ids.append(sid)
        cats.append(meta.contiguous_id[cid] if known else unknown_index)
        if ground_truth:
            if "iscrowd" not in rec:
                no_crowd.append(sid)
            crowd.append(rec.get("iscrowd", 0) == 1)
            a = rec.get("area")
            if not isinstance(a, (int, float)) or isinstance(a, bool):
                no_area.append(sid)
                a = math.nan
            area.append(a)
    _report_columns(unknown, no_crowd, no_area, ground_truth, where, findings)
    if ground_truth:
        return SegmentTable.build(ids, cats, crowd, area)
    return SegmentTable.build(ids, cats)


def _segments_by_id(segments_info: list, side: str, where: str, findings: list[Finding]) -> dict[int, dict]:
    """Segment id -> its record; the last of a repeated id wins (a warning, as in panopticapi); a
    record without an integer id or a category is an error and left out; id 0 is a warning."""
    by_id: dict[int, dict] = {}
    repeated = []
    for rec in segments_info:
        sid = _as_int(rec.get("id")) if isinstance(rec, dict) else None
        if sid is None or "category_id" not in rec:
            findings.append(Finding("error", where, f"{side} segment {rec!r} needs an integer 'id' and a "
                                                    "'category_id'"))
            continue
        if sid in by_id:
            repeated.append(sid)
        by_id[sid] = rec
    if 0 in by_id:
        findings.append(Finding("warning", where, f"{side} segment id 0 (category {by_id[0]['category_id']!r}) is "
                                                  "listed in segments_info: it is evaluated as an ordinary segment "
                                                  "made of the PNG's 0 (VOID) pixels, as panopticapi does"))
    if repeated:
        findings.append(Finding("warning", where, f"{side} segment id(s) {shown(repeated)} are listed more than "
                                                  "once in segments_info; the last entry of each is used (as in "
                                                  "panopticapi)"))
    return by_id


def _report_columns(unknown: list, no_crowd: list, no_area: list, ground_truth: bool, where: str,
                    findings: list[Finding]) -> None:
    """Findings for unknown categories (an error in a prediction, a warning in the ground truth) and
    ground-truth segments without ``iscrowd`` or a numeric ``area``."""
    if unknown:
        listed = shown([f"segment {s} category_id {c!r}" for s, c in unknown], sep=", ")
        if ground_truth:
            findings.append(Finding("warning", where, f"ground-truth {listed}: not in the categories; such segments "
                                                      "count towards no average (as in panopticapi)"))
        else:
            findings.append(Finding("error", where, f"prediction {listed}: not in the categories"))
    if no_crowd:
        findings.append(Finding("warning", where, f"ground-truth segment(s) {shown(no_crowd)} have no 'iscrowd'; "
                                                  "taken as not crowd"))
    if no_area:
        findings.append(Finding("warning", where, f"ground-truth segment(s) {shown(no_area)} have no numeric "
                                                  "'area'; their PNG pixel counts are used"))


def png_path(folder: Path, file_name: Any, where: str, findings: list[Finding]) -> Path | None:
    """``folder / file_name`` as panopticapi joins them; a name that leaves the folder is a warning."""
    if not isinstance(file_name, str) or not file_name:
        findings.append(Finding("error", where, f"'file_name' {file_name!r} is not a file name"))
        return None
    if os.path.isabs(file_name) or ".." in Path(file_name).parts:
        findings.append(Finding("warning", where, f"file_name {file_name!r} leaves the PNG folder {folder}; it is "
                                                  "read where it points (as in panopticapi)"))
    return folder / file_name


@dataclass
class ImagePair:
    """One ground-truth annotation and its prediction (raw JSON dicts, parsed by the worker)."""

    image_id: Any
    gt: dict
    pred: dict


def read_annotations(path: Path) -> dict:
    """A COCO panoptic JSON: an object with an ``annotations`` list."""
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise PanopticFormatError(f"{path}: expected a JSON object with an 'annotations' list")
    return data


def _match_by_file_name(missing: list[tuple[Any, dict]], preds: dict[Any, dict], gt_ids: set
                        ) -> tuple[list[ImagePair], list[tuple[Any, dict]]]:
    """Ground-truth annotations without a prediction of their id, paired with a prediction of the same
    ``file_name`` stem whose id is no ground-truth id (predict without --gt-json names images by
    stem); returns (those pairs, the annotations still missing)."""
    stems = {Path(a["file_name"]).stem: a for k, a in preds.items()
             if k not in gt_ids and isinstance(a.get("file_name"), str)}
    pairs, still = [], []
    for image_id, ann in missing:
        pred = stems.pop(Path(ann["file_name"]).stem, None) if isinstance(ann.get("file_name"), str) else None
        if pred is None:
            still.append((image_id, ann))
        else:
            pairs.append(ImagePair(image_id, ann, pred))
    return pairs, still


def pair_images(gt_json: Path, gt_data: dict, pred_json: Path, pred_data: dict,
                findings: list[Finding]) -> list[ImagePair]:
    """Pair every ground-truth annotation with its prediction, panopticapi's way."""
    preds: dict[Any, dict] = {}
    repeated = []
    for i, ann in enumerate(pred_data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or not _hashable(ann["image_id"]):
            findings.append(Finding("error", str(pred_json), f"annotation #{i} has no usable 'image_id'"))
            continue
        if ann["image_id"] in preds:
            repeated.append(ann["image_id"])
        preds[ann["image_id"]] = ann
    if repeated:
        findings.append(Finding("warning", str(pred_json), f"image_id(s) {shown(repeated)} are predicted more than "
                                                           "once; the last prediction of each is used (as in "
                                                           "panopticapi)"))
    pairs, missing, seen, gt_repeated = [], [], set(), []
    for i, ann in enumerate(gt_data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or not _hashable(ann["image_id"]):
            findings.append(Finding("error", str(gt_json), f"annotation #{i} has no usable 'image_id'"))
            continue
        image_id = ann["image_id"]
        if image_id in seen:
            gt_repeated.append(image_id)
        seen.add(image_id)
        if image_id not in preds:
            missing.append((image_id, ann))
            continue
        pairs.append(ImagePair(image_id, ann, preds[image_id]))
    if gt_repeated:
        findings.append(Finding("warning", str(gt_json), f"image_id(s) {shown(gt_repeated)} are annotated more "
                                                         "than once; each annotation is evaluated (as in "
                                                         "panopticapi)"))
    by_name, missing = _match_by_file_name(missing, preds, seen)
    pairs += by_name
    if by_name:
        example = by_name[0]
        findings.append(Finding("warning", str(pred_json), f"{len(by_name)} prediction(s) have image ids other than "
                                                           f"the ground truth's (e.g. {example.pred['image_id']!r} "
                                                           f"for {example.image_id!r}); matched by file_name"))
    if missing:
        others = [k for k in preds if k not in seen]
        findings.append(Finding("error", str(pred_json), f"no prediction for {len(missing)} ground-truth image(s): "
                                                         f"{shown([repr(m) for m, _ in missing], 20, sep=', ')}"
                                                         + (f"; the prediction has ids {shown(others, 5)}"
                                                            if others else "")
                                                         + "; predict with --gt-json naming this ground truth, "
                                                           "so that ids and file names follow it"))
    matched = {p.pred["image_id"] for p in by_name}
    extra = [k for k in preds if k not in seen and k not in matched]
    if extra:
        findings.append(Finding("warning", str(pred_json), f"{len(extra)} prediction(s) for image ids not in the "
                                                           f"ground truth are ignored: {shown(extra)}"))
    return pairs


def _hashable(v: Any) -> bool:
    try:
        hash(v)
    except TypeError:
        return False
    return True
