"""Training targets from a `PanopticSample`.

Semantic variants (``semantic=``):
- ``"stuff_things"`` (Panoptic FPN): 0 = any thing, 1..S = stuff in contiguous stuff order.
- ``"all"`` (OANet's object context, Liu et al. 2019, Table 2): every category by its contiguous id.
VOID pixels are ``IGNORE_INDEX`` (255) in both. Crowd pixels get their class (the "things" class
in ``stuff_things``), as detectron2 builds its semantic targets: a crowd region is still that
class for the semantic head; only the detector leaves crowd out (``crowd_*`` targets).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torchvision.ops import masks_to_boxes

from panoptix.data.meta import IGNORE_INDEX, DatasetMeta
from panoptix.data.sample import PanopticSample, map_ids

SemanticVariant = Literal["stuff_things", "all"]


def semantic_lut(meta: DatasetMeta, variant: SemanticVariant) -> dict[int, int]:
    """Category id -> semantic training index for a variant."""
    if variant == "all":
        return dict(meta.contiguous_id)
    if variant == "stuff_things":
        return {**{c: 0 for c in meta.thing_ids}, **{c: i + 1 for c, i in meta.stuff_contiguous_id.items()}}
    raise ValueError(f"unknown semantic variant {variant!r}; expected 'stuff_things' or 'all'")


def num_semantic_classes(meta: DatasetMeta, variant: SemanticVariant) -> int:
    return meta.num_classes if variant == "all" else meta.num_stuff + 1


def semantic_map(sample: PanopticSample, meta: DatasetMeta, variant: SemanticVariant) -> np.ndarray:
    """(H, W) int64 semantic training indices of a variant, VOID = IGNORE_INDEX."""
    unknown = [s.category_id for s in sample.segments if s.category_id not in meta]
    if unknown:
        raise ValueError(f"image {sample.image_id!r}: category id(s) {unknown} are not in {meta.name}")
    lut = semantic_lut(meta, variant)
    seg_ids = np.array([s.id for s in sample.segments], dtype=np.int64)
    values = np.array([lut[s.category_id] for s in sample.segments], dtype=np.int64)
    return map_ids(np.asarray(sample.ids), seg_ids, values, IGNORE_INDEX)


def build_targets(sample: PanopticSample, meta: DatasetMeta, semantic: SemanticVariant = "stuff_things"
                  ) -> dict[str, torch.Tensor]:
    """Targets of one image.

    Returns a dict of tensors:
        ``semantic`` (H, W) int64; ``boxes`` (N, 4) float32 xyxy (pixel edges, x1 = last column + 1);
        ``labels`` (N,) int64 contiguous thing ids; ``masks`` (N, H, W) uint8; ``segment_ids`` (N,);
        ``crowd_boxes`` (M, 4), ``crowd_labels`` (M,), ``crowd_masks`` (M, H, W) for crowd things;
        ``panoptic`` (H, W) int32 segment-id map.
    """
    ids = np.asarray(sample.ids)
    segs = sample.segments
    out = {"semantic": torch.from_numpy(semantic_map(sample, meta, semantic)),
           "panoptic": torch.from_numpy(ids.astype(np.int32))}
    id_map = out["panoptic"].long()
    for prefix, crowd in (("", False), ("crowd_", True)):
        things = [s for s in segs if meta.isthing(s.category_id) and s.iscrowd == crowd]
        tid = torch.tensor([s.id for s in things], dtype=torch.int64)
        masks = (id_map[None] == tid[:, None, None]).to(torch.uint8)
        boxes = masks_to_boxes(masks).float() if len(things) else torch.zeros((0, 4))
        boxes[:, 2:] += 1
        out[prefix + "boxes"] = boxes
        out[prefix + "labels"] = torch.tensor([meta.thing_contiguous_id[s.category_id] for s in things],
                                              dtype=torch.int64)
        out[prefix + "masks"] = masks
        if not crowd:
            out["segment_ids"] = tid
    return out


def build_semantic_target(sample: PanopticSample, meta: DatasetMeta) -> dict[str, torch.Tensor]:
    """Targets of a scene parsing system: ``semantic`` (H, W) int64, every category by its
    contiguous id (the ``"all"`` variant), VOID = 255. Crowd segments keep their class."""
    return {"semantic": torch.from_numpy(semantic_map(sample, meta, "all"))}


def instance_index_map(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) non-overlapping masks -> (H, W) int64 index of the mask covering each pixel, -1
    where none does (one matrix product: an argmax over N is slow on the CPU)."""
    if len(masks) == 0:
        return torch.full(size, -1, dtype=torch.int64, device=masks.device)
    order = torch.arange(1, len(masks) + 1, dtype=torch.float32, device=masks.device)
    return torch.einsum("n,nhw->hw", order, masks.float()).long() - 1

