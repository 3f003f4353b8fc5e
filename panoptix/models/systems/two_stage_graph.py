"""The two-stage system as one exportable graph (Panoptic FPN, OANet, UPSNet): normalisation, backbone
and FPN, RPN proposals with NMS, RoI heads with box decoding and NMS, mask paste, the semantic head
(and OANet's ranking head) and the merge, for one image of a fixed size (`panoptix.engine.export`).

The detections (a variable number up to ``detections_per_img`` = D) are padded to D rows; the
merge is its fixed-shape form (`panoptix.fusion.graph_merge`). The RoI pooling runs torchvision's
``roi_align`` kernel, which exports; the ``matmul`` pooler computes the same numbers with
data-dependent Python control flow, so an exported copy is switched to the kernel.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torchvision.ops import MultiScaleRoIAlign

from panoptix.errors import ExportError
from panoptix.fusion.area import stuff_area_limit
from panoptix.fusion.graph_merge import PANOPTIC_OUTPUTS, pad_rows
from panoptix.fusion.needs import graph_merge
from panoptix.fusion.ranking import RANK_FIELD
from panoptix.models.postprocess import paste_masks, resize_semantic_logits
from panoptix.models.preprocess import export_size
from panoptix.models.roi_align import MatmulMultiScaleRoIAlign


def kernel_pooling(module: nn.Module) -> nn.Module:
    """``module`` with every `MatmulMultiScaleRoIAlign` replaced by torchvision's `MultiScaleRoIAlign`
    with the same settings (in place; pass a copy)."""
    for name, child in module.named_children():
        if isinstance(child, MatmulMultiScaleRoIAlign):
            setattr(module, name, MultiScaleRoIAlign(child.featmap_names, child.output_size, child.sampling_ratio,
                                                     canonical_scale=child.canonical_scale,
                                                     canonical_level=child.canonical_level))
        else:
            kernel_pooling(child)
    return module


class TwoStageGraph(nn.Module):
    """A `TwoStagePanoptic` on one image of a fixed ``size``: (3, H, W) float 0..1 -> ``(ids,
    categories, scores, areas)`` as `panoptix.engine.export` describes.

    Every RoI head of the Mask R-CNN family traces (Mask R-CNN, the cascade, HTC: their stage loops
    are fixed, and their proposal sets flow as tensors). Refused in one line: a merge without a
    fixed-shape form, and a refinement (the Dense CRF runs outside PyTorch).
    """

    output_names = PANOPTIC_OUTPUTS

    def __init__(self, model: nn.Module, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = export_size(model.preprocess, size)
        head = model.instance_head
        self.merge, self.merge_args = graph_merge(model.fusion)
        if self.merge is None:
            name = getattr(getattr(model.fusion, "func", model.fusion), "__name__", "the merge")
            raise ExportError(f"the {name} merge has no fixed-shape form to export; export with model.fusion.name: "
                              f"heuristic, ranking or upsnet")
        if model.refine is not None:
            raise ExportError("model.refine (a Dense CRF) runs outside PyTorch and does not export; export with "
                              "model.refine=null and refine the exported model's output separately")
        self.model = kernel_pooling(copy.deepcopy(model)).eval()
        self.detections = int(head.detections_per_img)
        order, order_by = self.merge_args.pop("order", None), self.merge_args.pop("order_by", None)
        if order_by not in (None, RANK_FIELD):
            raise ExportError(f"the merge orders by {order_by!r}, which the exported graph does not compute")
        self.order = order or ("rank" if order_by else None)   # the heuristic's order_by=rank_scores is rank
        if self.order and model.ranking_head is None:
            raise ExportError("the ranking merge needs the model's ranking head, and this model has none")
        self.register_buffer("semantic_categories", torch.as_tensor(model.semantic_categories, dtype=torch.int64))
        self.register_buffer("thing_categories", torch.as_tensor(model.thing_categories, dtype=torch.int64))
        self.min_area = stuff_area_limit(self.size, self.merge_args.pop("stuff_min_area", 4096),
                                         self.merge_args.pop("stuff_min_area_fraction", None))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        model, d = self.model, self.detections
        batch = model.preprocess([image])
        feats = model.neck(model.backbone(batch.tensors))
        sem_logits, _, extra = model.semantic_outputs(feats)
        inst = model.instance_head(batch, feats, **extra)[0][0]
        boxes, scores = pad_rows(inst.boxes.float(), d), pad_rows(inst.scores.float(), d, -1.0)
        labels = pad_rows(inst.labels, d)
        valid = pad_rows(torch.ones_like(inst.scores, dtype=torch.bool), d, 0.0)
        box_masks = pad_rows(inst.masks[:, 0].float(), d)
        masks = paste_masks(box_masks, boxes, self.size)
        logits = resize_semantic_logits(sem_logits[0], tuple(batch.image_sizes[0]), self.size)
        order = self.paste_order(box_masks, boxes, scores, labels, valid & (scores >= model.min_instance_score),
                                 tuple(sem_logits.shape[-2:]), batch.tensors.shape[-2] // sem_logits.shape[-2])
        return self.merge(boxes=boxes, scores=scores, labels=labels, masks=masks, valid=valid,
                          semantic_logits=logits, semantic_categories=self.semantic_categories,
                          thing_categories=self.thing_categories, min_area=self.min_area, order=order,
                          **self.merge_args)

    def paste_order(self, box_masks: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                    keep: torch.Tensor, grid: tuple[int, int], stride: int) -> torch.Tensor | None:
        """The ranking merges' (D,) paste-order key: the ranking head's scores of the kept rows
        (`TwoStagePanoptic.add_rank_scores`; the other rows' masks are zeroed, so that only the
        instances the merge sees are scattered), times the detection score for ``rank_x_score``;
        None for a merge in score order."""
        if self.order is None:
            return None
        small = paste_masks(box_masks * keep[:, None, None], boxes / stride, grid)
        rank = self.model.ranking_head.rank_scores(small, labels)
        return rank * scores if self.order == "rank_x_score" else rank


__all__ = ["TwoStageGraph", "kernel_pooling"]
