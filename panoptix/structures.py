"""Types that models, fusion methods and the evaluator exchange: `Instances`, `PanopticResult`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class Instances:
    """Detected instances of one image (N of them).

    Attributes:
        boxes: (N, 4) float xyxy in pixels of ``image_size``.
        scores: (N,) float confidences.
        labels: (N,) int64 contiguous thing indices (``DatasetMeta.thing_contiguous_id``).
        masks: (N, H, W) float mask probabilities at ``image_size`` (or logits, see
            ``mask_logits``), or (N, 1, M, M) box-relative masks straight from a mask head.
        image_size: (height, width) of the image the boxes and masks refer to.
        extra: further per-instance tensors, each with N rows (ranking scores, embeddings, ...).

    Indexing with an int, a slice, an index tensor or a (N,) bool mask selects the same rows of
    every per-instance field.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None = None
    mask_logits: bool = False
    image_size: tuple[int, int] = (0, 0)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self)
        for name, value in (("boxes", self.boxes), ("labels", self.labels), ("masks", self.masks),
                            *self.extra.items()):
            if value is not None and value.shape[0] != n:
                raise ValueError(f"Instances.{name} has {value.shape[0]} rows, scores has {n}")

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def __getitem__(self, index: int | slice | torch.Tensor) -> Instances:
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        pick = (lambda t: t[index]) if not isinstance(index, torch.Tensor) else (lambda t: t[index.to(t.device)])
        return Instances(pick(self.boxes), pick(self.scores), pick(self.labels),
                         pick(self.masks) if self.masks is not None else None, self.mask_logits, self.image_size,
                         {k: pick(v) for k, v in self.extra.items()})

    def replace(self, **fields: Any) -> Instances:
        """A copy with some fields replaced (``dataclasses.replace`` that keeps ``extra`` a new dict)."""
        return dataclasses.replace(self, **{"extra": dict(self.extra), **fields})

    def to(self, device: torch.device | str) -> Instances:
        masks = self.masks.to(device) if self.masks is not None else None
        return Instances(self.boxes.to(device), self.scores.to(device), self.labels.to(device), masks,
                         self.mask_logits, self.image_size, {k: v.to(device) for k, v in self.extra.items()})


@dataclass
class SegmentInfo:
    """One segment of a `PanopticResult`."""

    id: int
    category_id: int
    isthing: bool
    score: float = 1.0
    area: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"id": int(self.id), "category_id": int(self.category_id), "isthing": bool(self.isthing),
                "score": float(self.score), "area": int(self.area)}


@dataclass
class PanopticResult:
    """The panoptic prediction for one image.

    Attributes:
        ids: (H, W) int32 segment-id map at the input image's original size; 0 = VOID.
        segments: one `SegmentInfo` per non-zero id of ``ids``.
        semantic_logits: optional (K, H, W) logits the result was fused from.
        instances: optional `Instances` the result was fused from.
    """

    ids: torch.Tensor
    segments: list[SegmentInfo]
    semantic_logits: torch.Tensor | None = None
    instances: Instances | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def ids_numpy(self) -> np.ndarray:
        ids = self.ids
        if isinstance(ids, torch.Tensor):
            ids = ids.detach().cpu().numpy()
        return np.asarray(ids, dtype=np.int32)


@dataclass
class RawPanoptic:
    """A two-stage system's output for one image before its merge (what every merge is fed).

    Attributes:
        instances: `Instances` at the image size, masks (N, H, W) probabilities; a ranking head adds
            ``extra["rank_scores"]``.
        semantic_logits: (K, H, W) float logits at the image size.
        image: (3, H, W) float RGB in 0..1 (the pairwise terms of a CRF refinement).
        ranking_seconds: wall time of the ranking head for this image (0 without one).
    """

    instances: Instances
    semantic_logits: torch.Tensor
    image: torch.Tensor
    ranking_seconds: float = 0.0

