"""Checks of annotations and predictions, with errors that name the file and the segment."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from panoptix.data.errors import PanopticFormatError
from panoptix.data.meta import DatasetMeta
from panoptix.data.sample import Segment

MAX_SEGMENT_ID = (1 << 24) - 1


def check_json_segments(segments_info: Iterable[Mapping[str, Any]], meta: DatasetMeta, where: str) -> list[Segment]:
    """Parse ``segments_info`` and check fields, id range, duplicate ids and categories."""
    if not isinstance(segments_info, list):
        raise PanopticFormatError(f"{where}: 'segments_info' must be a list")
    segments, seen = [], set()
    for rec in segments_info:
        if not isinstance(rec, Mapping) or "id" not in rec or "category_id" not in rec:
            raise PanopticFormatError(f"{where}: segment {rec!r} lacks 'id' or 'category_id'")
        seg = Segment.from_json(rec)
        if not 0 < seg.id <= MAX_SEGMENT_ID:
            raise PanopticFormatError(f"{where}: segment id {seg.id} is outside 1..{MAX_SEGMENT_ID} (0 is VOID)")
        if seg.id in seen:
            raise PanopticFormatError(f"{where}: segment id {seg.id} appears twice in segments_info")
        if seg.category_id not in meta:
            raise PanopticFormatError(f"{where}: segment {seg.id} has unknown category_id {seg.category_id}")
        seen.add(seg.id)
        segments.append(seg)
    return segments


def check_png_segments(ids: np.ndarray, segments: Iterable[Segment], where: str) -> None:
    """Every JSON segment appears in the PNG and every non-VOID PNG id has a JSON segment."""
    present = np.unique(ids)
    present = set(present[present != 0].tolist())
    listed = {s.id for s in segments}
    missing_png = sorted(listed - present)
    if missing_png:
        raise PanopticFormatError(f"{where}: segment id(s) {missing_png[:10]} are in the JSON but not in the PNG")
    missing_json = sorted(present - listed)
    if missing_json:
        raise PanopticFormatError(f"{where}: PNG id(s) {missing_json[:10]} have no segment in the JSON")


def resolve_inside(root: Path, name: str, where: str) -> Path:
    """``root / name``, refusing a name that escapes ``root`` (absolute paths, ``..``)."""
    root_resolved = Path(root).resolve()
    path = (root_resolved / name).resolve()
    if not path.is_relative_to(root_resolved):
        raise PanopticFormatError(f"{where}: file_name {name!r} escapes the dataset folder {root}")
    return path
