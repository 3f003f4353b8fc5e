"""`DatasetMeta`: the one catalogue of a dataset's categories and its contiguous id maps.

Everything that needs to know the classes (evaluator, visualiser, targets, models, CLI) reads
them from here; the catalogue is built from the dataset's own JSON, never hard-coded.

Contiguous indices:
- ``contiguous_id[c]``: 0..K-1 over all categories, in catalogue order.
- ``thing_contiguous_id[c]``: 0..T-1 over thing categories, in catalogue order.
- ``stuff_contiguous_id[c]``: 0..S-1 over stuff categories, in catalogue order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from panoptix.data.errors import PanopticFormatError

IGNORE_INDEX = 255


@dataclass(frozen=True)
class Category:
    """One category of a dataset: its dataset id, name, thing/stuff flag and RGB colour."""

    id: int
    name: str
    isthing: bool
    color: tuple[int, int, int]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "isthing": int(self.isthing), "color": list(self.color)}


class DatasetMeta:
    """Categories of one dataset with contiguous id maps for all classes, things and stuff."""

    def __init__(self, categories: Sequence[Category], name: str = "dataset") -> None:
        if not categories:
            raise PanopticFormatError(f"{name}: the category list is empty")
        seen: set[int] = set()
        for cat in categories:
            if cat.id in seen:
                raise PanopticFormatError(f"{name}: category id {cat.id} appears twice")
            if cat.id < 0:
                raise PanopticFormatError(f"{name}: category id {cat.id} is negative")
            seen.add(cat.id)
        self.name = name
        self.categories: tuple[Category, ...] = tuple(categories)
        self.by_id: dict[int, Category] = {c.id: c for c in self.categories}
        self.thing_ids: tuple[int, ...] = tuple(c.id for c in self.categories if c.isthing)
        self.stuff_ids: tuple[int, ...] = tuple(c.id for c in self.categories if not c.isthing)
        self.contiguous_id: dict[int, int] = {c.id: i for i, c in enumerate(self.categories)}
        self.thing_contiguous_id: dict[int, int] = {c: i for i, c in enumerate(self.thing_ids)}
        self.stuff_contiguous_id: dict[int, int] = {c: i for i, c in enumerate(self.stuff_ids)}

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_categories(cls, records: Iterable[Mapping[str, Any]], name: str = "dataset") -> DatasetMeta:
        """Build from COCO-style category dicts (``id``, ``name``, ``isthing``, optional ``color``)."""
        cats = []
        for i, rec in enumerate(records):
            missing = [k for k in ("id", "name", "isthing") if k not in rec]
            if missing:
                raise PanopticFormatError(f"{name}: category #{i} lacks field(s) {missing}: {dict(rec)}")
            if rec["isthing"] not in (0, 1, True, False):
                raise PanopticFormatError(f"{name}: category {rec['id']} has isthing={rec['isthing']!r}, "
                                          "expected 0 or 1")
            color = rec.get("color") or _fallback_color(int(rec["id"]))
            if len(color) != 3:
                raise PanopticFormatError(f"{name}: category {rec['id']} colour {color!r} is not RGB")
            cats.append(Category(int(rec["id"]), str(rec["name"]), bool(rec["isthing"]), tuple(int(v) for v in color)))
        return cls(cats, name=name)

    @classmethod
    def from_json(cls, path: str | Path) -> DatasetMeta:
        """Read categories from a COCO panoptic JSON (``{"categories": [...]}``) or a bare list."""
        path = Path(path)
        if not path.is_file():
            raise PanopticFormatError(f"{path}: category file not found")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise PanopticFormatError(f"{path}: malformed JSON ({err})") from err
        records = data["categories"] if isinstance(data, dict) and "categories" in data else data
        if not isinstance(records, list):
            raise PanopticFormatError(f"{path}: expected a list of categories or a dict with 'categories'")
        return cls.from_categories(records, name=str(path))

    def to_json(self) -> list[dict[str, Any]]:
        return [c.to_json() for c in self.categories]

    # ----------------------------------------------------------------- queries
    @property
    def category_ids(self) -> tuple[int, ...]:
        """The category id of each contiguous index 0..K-1 (catalogue order)."""
        return tuple(c.id for c in self.categories)

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def num_things(self) -> int:
        return len(self.thing_ids)

    @property
    def num_stuff(self) -> int:
        return len(self.stuff_ids)

    def isthing(self, category_id: int) -> bool:
        return self.by_id[category_id].isthing

    def __contains__(self, category_id: object) -> bool:
        return category_id in self.by_id

    def __len__(self) -> int:
        return len(self.categories)

    def __repr__(self) -> str:
        return f"DatasetMeta({self.name!r}, things={self.num_things}, stuff={self.num_stuff})"

    def lookup_table(self, mapping: Mapping[int, int], fill: int = IGNORE_INDEX) -> np.ndarray:
        """Array ``lut`` with ``lut[category_id] = mapping[category_id]`` and ``fill`` elsewhere.

        Lets a whole category map be converted at once: ``lut[category_map]``.
        """
        lut = np.full(max(self.by_id) + 1, fill, dtype=np.int64)
        for cid, idx in mapping.items():
            lut[cid] = idx
        return lut

    def colors(self) -> np.ndarray:
        """(K, 3) uint8 colours in contiguous order."""
        return np.array([c.color for c in self.categories], dtype=np.uint8)


def _fallback_color(category_id: int) -> tuple[int, int, int]:
    """A stable, well-spread colour for categories whose JSON gives none."""
    rng = np.random.default_rng(category_id)
    return tuple(int(v) for v in rng.integers(40, 256, size=3))
