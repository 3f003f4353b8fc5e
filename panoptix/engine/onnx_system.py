"""An exported ONNX file run with onnxruntime as a system: ``model(images) -> list[PanopticResult]``,
so that ``panoptix predict --weights m.onnx`` (and `Predictor`, `predict_files`) write the same outputs
as for a checkpoint with no torch model built. Everything it needs is in the file's metadata
(`panoptix.engine.onnx_metadata`).

The graph takes one image of the size it was exported at. An image of another size is resized to it
(bilinear with antialias, the model's own test resize) and the segment map back (nearest), and the
areas are recounted; `notes` says so once per size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from panoptix.engine.onnx_metadata import metadata_meta, read_metadata
from panoptix.errors import ExportError
from panoptix.image_input import as_image_tensors
from panoptix.models.preprocess import resize_image
from panoptix.structures import PanopticResult, SegmentInfo


def segment_infos(categories: np.ndarray, scores: np.ndarray, areas: np.ndarray, thing_ids: Sequence[int]
                  ) -> list[SegmentInfo]:
    """`SegmentInfo` of every segment with a non-zero area (segment q + 1 <- row q of the outputs)."""
    things = set(int(c) for c in thing_ids)
    return [SegmentInfo(int(q) + 1, int(categories[q]), int(categories[q]) in things, float(scores[q]), int(areas[q]))
            for q in np.flatnonzero(np.asarray(areas) > 0)]


class OnnxSystem(nn.Module):
    """An exported file behind the detection contract (inference only).

    Args:
        path: a ``.onnx`` file written by ``panoptix export``.

    Attributes:
        task, meta, size: from the file's metadata; ``notes``: the resizes it did.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportError("running an ONNX model needs onnxruntime: pip install 'panoptix[export]'") from None
        if not Path(path).is_file():
            raise ExportError(f"{path}: no such ONNX file")
        self.path = str(path)
        self.session = ort.InferenceSession(self.path, providers=["CPUExecutionProvider"])
        self.metadata = read_metadata(self.session)
        self.task = self.metadata["task"]
        self.meta = metadata_meta(self.metadata)
        self.size = tuple(int(v) for v in self.metadata["input"]["shape"][1:])
        self.categories = list(self.meta.category_ids)
        self.notes: list[str] = []
        self.eval()

    def forward(self, images: Sequence[Any]) -> list[PanopticResult]:
        if self.training:
            raise RuntimeError("an exported ONNX model only predicts")
        return [self.predict_one(im) for im in as_image_tensors(list(images), "cpu")]

    def predict_one(self, image: torch.Tensor) -> PanopticResult:
        """One (3, H, W) float image in 0..1 -> its `PanopticResult` at its own size."""
        size = tuple(image.shape[-2:])
        if size != self.size:
            note = (f"{Path(self.path).name} takes {self.size[0]}x{self.size[1]} images: {size[0]}x{size[1]} inputs "
                    f"are resized to it and the segment maps back (nearest)")
            if note not in self.notes:
                self.notes.append(note)
            image = resize_image(image, self.size)
        outputs = self.session.run(None, {"image": image.float().numpy()})
        if self.task == "semantic":   # class k is segment k + 1
            ids = torch.from_numpy(outputs[0]).long() + 1
            categories, scores = np.asarray(self.categories), np.ones(len(self.categories), dtype=np.float32)
        else:
            ids, categories, scores = torch.from_numpy(outputs[0]).long(), outputs[1], outputs[2]
        if size != self.size:
            ids = F.interpolate(ids[None, None].float(), size=size, mode="nearest")[0, 0].long()
        areas = torch.bincount(ids.flatten(), minlength=len(categories) + 1)[1:].numpy()
        segments = segment_infos(categories, scores, areas, self.meta.thing_ids)
        extra = {"semantic": ids - 1} if self.task == "semantic" else {}
        return PanopticResult(ids=ids.to(torch.int32), segments=segments, extra=extra)

__all__ = ["OnnxSystem", "segment_infos"]
