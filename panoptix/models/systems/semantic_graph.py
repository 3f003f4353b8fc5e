"""The scene parsing system as one exportable graph: normalisation, network and the per-pixel argmax,
for one image of a fixed size (`panoptix.engine.export`)."""

from __future__ import annotations

import torch
from torch import nn

from panoptix.models.preprocess import export_size

OUTPUT_NAMES = ("labels",)


class SemanticGraph(nn.Module):
    """A `SceneParser` on one image of a fixed ``size``: (3, H, W) float 0..1 -> ``labels`` (H, W)
    int64, the contiguous class index of each pixel (class k is the k-th category of the file's
    metadata)."""

    output_names = OUTPUT_NAMES

    def __init__(self, model: nn.Module, size: tuple[int, int]) -> None:
        super().__init__()
        self.model, self.size = model.eval(), export_size(model.preprocess, size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        batch = self.model.preprocess([image])
        return self.model.batch_logits(batch, [self.size])[0].argmax(0)


__all__ = ["SemanticGraph", "OUTPUT_NAMES"]
