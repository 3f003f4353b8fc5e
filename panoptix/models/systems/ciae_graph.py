"""The CIAE system as one exportable graph: normalisation, network, detection with NMS, and the merge
up to the segment map, for one image of a fixed size (see `panoptix.engine.export`)."""

from __future__ import annotations

import torch
from torch import nn

from panoptix.fusion.embedding import assign_segments
from panoptix.fusion.graph_merge import PANOPTIC_OUTPUTS
from panoptix.models.heads.fcos import LOCATION_FIELD
from panoptix.models.preprocess import export_size
from panoptix.models.systems.ciae import CIAEPanoptic, image_embeddings, read_queries


class CIAEGraph(nn.Module):
    """A `CIAEPanoptic` on one image of a fixed ``size``: (3, H, W) float 0..1 -> ``PANOPTIC_OUTPUTS``."""

    output_names = PANOPTIC_OUTPUTS

    def __init__(self, model: CIAEPanoptic, size: tuple[int, int]) -> None:
        super().__init__()
        self.model, self.size = model.eval(), export_size(model.preprocess, size)
        self.register_buffer("stuff_categories", torch.as_tensor(model.stuff_categories, dtype=torch.int64))
        self.register_buffer("thing_categories", torch.as_tensor(model.thing_categories, dtype=torch.int64))
        self.stuff_min_area = model.stuff_area_limit(self.size)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = self.model.preprocess([image])       # normalisation and padding, as in PyTorch
        out, raw, feats = self.model.network(batch.tensors)
        det = self.model.detect(out, feats, [self.size])[0]
        stride = batch.tensors.shape[-2] // raw.shape[-2]
        emb = image_embeddings(raw[0], self.size, self.size, stride)
        query = read_queries(emb, det.extra[LOCATION_FIELD], self.size)
        ids, areas = assign_segments(emb, self.model.stuff_queries(), query, det.boxes, self.stuff_min_area,
                                     self.model.box_filter)
        labels = self.model.instance_labels(det.labels, query)
        categories = torch.cat([self.stuff_categories, self.thing_categories[labels]])
        scores = torch.cat([torch.ones_like(self.stuff_categories, dtype=torch.float32), det.scores.float()])
        return ids, categories, scores, areas


__all__ = ["CIAEGraph"]
