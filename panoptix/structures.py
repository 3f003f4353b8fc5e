"""Types that models, fusion methods and the evaluator exchange: `Instances`, `PanopticResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch


@dataclass
class Instances:
    """Detected instances of one image (N of them).

    Attributes:
        boxes: (N, 4) float xyxy in image pixels.
        scores: (N,) float confidences.
        labels: (N,) int64 contiguous thing indices (``DatasetMeta.thing_contiguous_id``).
        masks: (N, H, W) float mask probabilities (or logits, see ``mask_logits``).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    masks: Optional[torch.Tensor] = None
    mask_logits: bool = False

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def to(self, device: torch.device | str) -> "Instances":
        masks = self.masks.to(device) if self.masks is not None else None
        return Instances(self.boxes.to(device), self.scores.to(device), self.labels.to(device), masks,
                         self.mask_logits)


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
    semantic_logits: Optional[torch.Tensor] = None
    instances: Optional[Instances] = None
    extra: dict[str, Any] = field(default_factory=dict)

    def ids_numpy(self) -> np.ndarray:
        ids = self.ids
        if isinstance(ids, torch.Tensor):
            ids = ids.detach().cpu().numpy()
        return np.asarray(ids, dtype=np.int32)
