"""`PanopticDataset`: a map-style torch dataset of `PanopticSample`s over any supported format."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from torch.utils.data import Dataset

from panoptix.data.formats import PanopticRecord, load_ade20k, load_cityscapes_panoptic, load_coco_panoptic, read_sample
from panoptix.data.meta import DatasetMeta
from panoptix.data.sample import PanopticSample
from panoptix.data.synthetic import synthetic_paths


class PanopticDataset(Dataset):
    """Records of one split, decoded lazily (so worker processes share nothing but paths).

    Args:
        meta: the dataset's categories.
        records: from one of the readers in `panoptix.data.formats`.
        load_images: decode the RGB images too (off for evaluation of ground truth only).
        transform: optional callable ``PanopticSample -> PanopticSample``.
    """

    def __init__(self, meta: DatasetMeta, records: Sequence[PanopticRecord], load_images: bool = True,
                 transform: Callable[[PanopticSample], PanopticSample] | None = None) -> None:
        self.meta = meta
        self.records = list(records)
        self.load_images = load_images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> PanopticSample:
        sample = read_sample(self.records[index], self.meta, load_image=self.load_images)
        return self.transform(sample) if self.transform else sample

    # ----------------------------------------------------------------- constructors
    @classmethod
    def coco(cls, gt_json: str | Path, gt_dir: str | Path | None = None, image_dir: str | Path | None = None,
             **kwargs) -> PanopticDataset:
        meta, records = load_coco_panoptic(gt_json, gt_dir, image_dir)
        return cls(meta, records, **kwargs)

    @classmethod
    def synthetic(cls, root: str | Path, split: str, **kwargs) -> PanopticDataset:
        p = synthetic_paths(root, split)
        return cls.coco(p["gt_json"], p["gt_dir"], p["image_dir"], **kwargs)

    @classmethod
    def cityscapes(cls, root: str | Path, split: str = "val", **kwargs) -> PanopticDataset:
        meta, records = load_cityscapes_panoptic(root, split)
        return cls(meta, records, **kwargs)

    @classmethod
    def ade20k(cls, root: str | Path, split: str = "validation", **kwargs) -> PanopticDataset:
        meta, records = load_ade20k(root, split)
        return cls(meta, records, **kwargs)
