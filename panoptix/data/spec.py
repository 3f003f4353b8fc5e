"""`DatasetSpec`: a config section naming a dataset on disk (``data.train`` / ``data.val``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from panoptix.errors import PanoptixError


@dataclass
class DatasetSpec:
    """Where a split lives.

    Attributes:
        format: ``coco`` (``json`` + ``png_dir`` + ``image_dir``) or ``synthetic`` / ``cityscapes`` /
            ``ade20k`` (``root`` + ``split``).
    """

    format: Literal["coco", "synthetic", "cityscapes", "ade20k"] = "coco"
    json: str | None = None
    png_dir: str | None = None
    image_dir: str | None = None
    root: str | None = None
    split: str | None = None

    def names_data(self) -> bool:
        return bool(self.json if self.format == "coco" else self.root)

    def open(self, load_images: bool = True) -> Any:
        """The `PanopticDataset`, or None when the section names no data."""
        from panoptix.data.datasets import PanopticDataset

        if not self.names_data():
            return None
        if self.format == "coco":
            return PanopticDataset.coco(self.json, self.png_dir, self.image_dir, load_images=load_images)
        if self.split is None:
            raise PanoptixError(f"a {self.format} dataset needs a split")
        return getattr(PanopticDataset, self.format)(self.root, self.split, load_images=load_images)
