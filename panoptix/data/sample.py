"""`PanopticSample` and `Segment`: one annotated image as the data layer hands it on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Segment:
    """One segment of a panoptic annotation (COCO ``segments_info`` entry).

    ``bbox`` is COCO ``[x, y, w, h]`` in pixels; ``area`` is its pixel count.
    """

    id: int
    category_id: int
    iscrowd: bool = False
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)
    area: int = 0

    @classmethod
    def from_json(cls, rec: Mapping[str, Any]) -> Segment:
        bbox = rec.get("bbox", (0, 0, 0, 0))
        return cls(int(rec["id"]), int(rec["category_id"]), bool(rec.get("iscrowd", 0)),
                   tuple(int(v) for v in bbox), int(rec.get("area", 0)))

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "category_id": self.category_id, "iscrowd": int(self.iscrowd),
                "bbox": [int(v) for v in self.bbox], "area": int(self.area)}


@dataclass
class PanopticSample:
    """One image with its panoptic annotation.

    Attributes:
        image: HxWx3 uint8 RGB, or None when only the annotation was read.
        ids: HxW int32 segment-id map; 0 is VOID.
        segments: the segments of ``ids`` (ids other than 0 appear exactly once).
        image_id: the dataset's image id (int or str, as in its JSON).
        file_name: the image's file name relative to the image folder.
    """

    ids: np.ndarray
    segments: list[Segment]
    image: np.ndarray | None = None
    image_id: Any = None
    file_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.ids.shape[0])

    @property
    def width(self) -> int:
        return int(self.ids.shape[1])

    def category_map(self, fill: int = -1) -> np.ndarray:
        """HxW int64 map of category ids (``fill`` on VOID and on ids with no segment)."""
        seg_ids = np.array([s.id for s in self.segments], dtype=np.int64)
        cats = np.array([s.category_id for s in self.segments], dtype=np.int64)
        return map_ids(self.ids, seg_ids, cats, fill)


def map_ids(ids: np.ndarray, keys: np.ndarray, values: np.ndarray, fill: int) -> np.ndarray:
    """Vectorised dictionary lookup: ``out[p] = values[i]`` where ``ids[p] == keys[i]``, else ``fill``.

    ``ids`` any integer shape; ``keys``/``values`` (N,). Works by binary search over the sorted
    keys, so the cost is O(pixels * log N) with no Python loop over pixels.
    """
    out = np.full(ids.shape, fill, dtype=np.int64)
    if len(keys) == 0:
        return out
    order = np.argsort(keys)
    sk, sv = keys[order], values[order]
    pos = np.searchsorted(sk, ids).clip(max=len(sk) - 1)
    hit = sk[pos] == ids
    out[hit] = sv[pos[hit]]
    return out


def bbox_of_mask(mask: np.ndarray) -> tuple[int, int, int, int]:
    """COCO ``[x, y, w, h]`` of a boolean HxW mask (zeros for an empty mask)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return (0, 0, 0, 0)
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))


def segments_from_ids(ids: np.ndarray, categories: Mapping[int, int],
                      iscrowd: Mapping[int, bool] | None = None) -> list[Segment]:
    """Segments (with area and bbox measured from ``ids``) for every non-zero id in ``ids``.

    ``categories`` maps segment id -> category id.
    """
    iscrowd = iscrowd or {}
    uniq, counts = np.unique(ids, return_counts=True)
    segs = []
    for sid, area in zip(uniq.tolist(), counts.tolist()):
        if sid == 0:
            continue
        segs.append(Segment(sid, int(categories[sid]), bool(iscrowd.get(sid, False)), bbox_of_mask(ids == sid), area))
    return segs
