"""`DatasetSpec`: a config section naming a dataset on disk (``data.train`` / ``data.val``).

A section gives ``format`` and either explicit paths or ``root`` + ``split``, from which each format's
own layout is found:

- ``coco`` and ``synthetic``: ``ROOT/annotations/panoptic_SPLIT.json``, its PNG folder
  ``ROOT/annotations/panoptic_SPLIT/`` and the images in ``ROOT/SPLIT/`` (COCO's layout:
  ``{format: coco, root: /data/coco, split: val2017}``);
- ``cityscapes``: cityscapesscripts' ``gtFine/cityscapes_panoptic_SPLIT.json`` and
  ``leftImg8bit/SPLIT/``;
- ``ade20k``: ``images/SPLIT/`` and ``annotations/SPLIT/`` (ADEChallengeData2016).

Explicit ``json`` / ``png_dir`` / ``image_dir`` win over the layout. A missing piece is one line
naming the path looked for and the key that sets it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from panoptix.errors import PanoptixError


def coco_layout(root: str | Path, split: str) -> dict[str, Path]:
    """COCO's panoptic layout of one split under ``root`` (``gt_json``, ``gt_dir``, ``image_dir``)."""
    root = Path(root)
    return {"gt_json": root / "annotations" / f"panoptic_{split}.json",
            "gt_dir": root / "annotations" / f"panoptic_{split}",
            "image_dir": root / split}


@dataclass
class DatasetSpec:
    """Where a split lives.

    Attributes:
        format: ``coco`` (``json`` + ``png_dir`` + ``image_dir``, or ``root`` + ``split`` in COCO's
            layout), or ``synthetic`` / ``cityscapes`` / ``ade20k`` (``root`` + ``split``).
        json, png_dir, image_dir: explicit COCO panoptic paths (``png_dir`` defaults to ``json``
            without ``.json``).
        root, split: the dataset's folder and split name; see the module docstring for each layout.
    """

    format: Literal["coco", "synthetic", "cityscapes", "ade20k"] = "coco"
    json: str | None = None
    png_dir: str | None = None
    image_dir: str | None = None
    root: str | None = None
    split: str | None = None

    def names_data(self) -> bool:
        return bool(self.root or (self.json if self.format == "coco" else False))

    def coco_paths(self, where: str = "data") -> tuple[Path, Path | None, Path | None]:
        """(json, PNG folder, image folder) of a COCO-layout section, explicit keys first; a missing
        JSON or folder is one `PanoptixError` line naming it and the key to set."""
        layout: dict[str, Path] = {}
        if self.root is not None:
            if self.split is None:
                raise PanoptixError(f"{where}: root {self.root} needs a split ({where}.split, e.g. val2017)")
            layout = coco_layout(self.root, self.split)
        json = Path(self.json) if self.json else layout.get("gt_json")
        png_dir = Path(self.png_dir) if self.png_dir else layout.get("gt_dir")
        image_dir = Path(self.image_dir) if self.image_dir else layout.get("image_dir")
        for key, path in {"json": json, "png_dir": png_dir, "image_dir": image_dir}.items():
            if path is None or (path.is_file() if key == "json" else path.is_dir()):
                continue
            source = "" if getattr(self, key) else f" (COCO layout of root {self.root}, split {self.split})"
            raise PanoptixError(f"{where}: no {'file' if key == 'json' else 'folder'} {path}{source}; "
                                f"set {where}.{key}")
        return json, png_dir, image_dir

    def open(self, load_images: bool = True, where: str = "data") -> Any:
        """The `PanopticDataset`, or None when the section names no data."""
        from panoptix.data.datasets import PanopticDataset

        if not self.names_data():
            return None
        if self.format in ("coco", "synthetic"):
            json, png_dir, image_dir = self.coco_paths(where)
            return PanopticDataset.coco(json, png_dir, image_dir, load_images=load_images)
        if self.split is None:
            raise PanoptixError(f"{where}: a {self.format} dataset needs a split ({where}.split)")
        return getattr(PanopticDataset, self.format)(self.root, self.split, load_images=load_images)
