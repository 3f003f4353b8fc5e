"""A box classifier on RoIAlign features, for a one-stage system's detections (CIAE's optional
``classifier``; not in the CIAE paper).

Why it exists: at the tiny CPU scale CIAE's FCOS classifier, which labels a box from the features
of the one location it came from, is right on about 44% of the synthetic shapes, while the merge
itself is good: with ground-truth classes given to its segments, `ciae_tiny` scores 50.7 PQ_th
against 20.4 (seed-1 split). Pooling a 7x7 grid over the box, as the two-stage system's box head
does, lets the classifier see the object's whole outline.

Pooling and head are the two-stage system's (`rcnn.box_roi_pool`, `rcnn.build_box_head`):
torchvision's 7x7 `MultiScaleRoIAlign` over P2-P5 with Mask R-CNN's level mapping and a 2-fc head,
then a linear layer to the thing classes. It trains with cross-entropy on the ground-truth boxes
and ``copies`` jittered copies of each (every coordinate moved by up to ``jitter`` of the box's
width or height), which stand in for the detector's imperfect boxes. It never sees background:
it relabels boxes the detector already found.

Optionally (``mask_loss_weight`` > 0) a Mask R-CNN mask head (14x14 RoIAlign, ``mask_convs``
convs, a 2x deconv, one 28x28 mask per thing class) trains on the ground-truth boxes with Mask
R-CNN's loss. It exists in training only: inference neither runs nor exports it. Its purpose is
the two-stage system's fine shape supervision for the shared FPN features, which CIAE's 1/4-scale
embedding loss does not give.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.roi_heads import maskrcnn_loss

from panoptix.models.heads.rcnn import RoIAlignName, box_roi_pool, build_box_head, build_mask_head, mask_roi_pool
from panoptix.registry import BOX_CLASSIFIERS, Configurable


def jittered_boxes(boxes: torch.Tensor, copies: int, jitter: float, size: tuple[int, int]) -> torch.Tensor:
    """(N, 4) xyxy boxes followed by ``copies`` jittered copies of each: ((1 + copies) * N, 4).

    Each coordinate moves by U(-jitter, jitter) of the box's width (x) or height (y); copies are
    clipped to the image ``size`` (H, W) and kept at least one pixel wide and high."""
    if copies == 0 or len(boxes) == 0:
        return boxes
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)                          # (N, 4): w, h, w, h
    noise = (torch.rand(copies, *boxes.shape, device=boxes.device) * 2 - 1) * jitter * wh
    moved = (boxes[None] + noise).reshape(-1, 4)
    h, w = size
    x1, y1 = moved[:, 0].clamp(0, w - 1), moved[:, 1].clamp(0, h - 1)
    x2 = torch.maximum(moved[:, 2].clamp(max=w), x1 + 1)
    y2 = torch.maximum(moved[:, 3].clamp(max=h), y1 + 1)
    return torch.cat([boxes, torch.stack([x1, y1, x2, y2], 1)])


@BOX_CLASSIFIERS.register("roi_classifier")
class RoIClassifier(Configurable, nn.Module):
    """Thing class of each box from a 7x7 RoIAlign of P2-P5.

    Args:
        in_channels, num_things: FPN width and number of thing classes (from the system).
        fc_dim: width of the two fully connected layers (1024 in Mask R-CNN; 256 in the tiny configs).
        copies: jittered copies of each ground-truth box in training (4).
        jitter: largest move of a coordinate, as a fraction of the box's width or height (0.15).
        loss_weight: weight of ``loss_roi_cls`` (1).
        mask_loss_weight: weight of the training-only ``loss_roi_mask`` (0: no mask head).
        mask_convs, mask_conv_dim: the mask head's conv tower (2 of 64 as the tiny two-stage system's;
            Mask R-CNN has 4 of 256).
        roi_align: the pooler *in training* (``"sparse"``, ``"torchvision"`` or ``"matmul"``, as
            `MaskRCNNBranch` takes it); inference always pools with torchvision's kernel, which exports to
            ONNX with the rest of the graph.

    ``forward(feats, boxes, image_sizes)``: feats {p2..p5} (B, C, h, w), boxes per image (N_i, 4) xyxy in
    the padded batch's pixels -> (sum N_i, num_things) logits.
    """

    derived = ("in_channels", "num_things")

    def __init__(self, in_channels: int, num_things: int, fc_dim: int = 1024, copies: int = 4,
                 jitter: float = 0.15, loss_weight: float = 1.0, mask_loss_weight: float = 0.0,
                 mask_convs: int = 2, mask_conv_dim: int = 64,
                 roi_align: RoIAlignName = "sparse") -> None:
        super().__init__()
        if copies < 0 or not 0 <= jitter < 0.5:
            raise ValueError(f"roi_classifier: copies must be >= 0 and jitter in [0, 0.5); got {copies}, {jitter}")
        self.num_things, self.copies, self.jitter, self.loss_weight = num_things, copies, jitter, loss_weight
        self.pool_train, self.pool_export = box_roi_pool(roi_align), box_roi_pool("torchvision")
        self.mask_loss_weight = mask_loss_weight
        self.mask_pool = self.mask_head = self.mask_predictor = None
        if mask_loss_weight > 0:
            self.mask_pool = mask_roi_pool(roi_align)
            self.mask_head, self.mask_predictor = build_mask_head(in_channels, mask_conv_dim, mask_convs, num_things)
        self.head = build_box_head(in_channels, fc_dim, convs=0, norm=None)
        self.logits = nn.Linear(fc_dim, num_things)

    def forward(self, feats: Mapping[str, torch.Tensor], boxes: Sequence[torch.Tensor],
                image_sizes: Sequence[tuple[int, int]]) -> torch.Tensor:
        pool = self.pool_train if self.training else self.pool_export
        pooled = pool(dict(feats), [b.float() for b in boxes], list(image_sizes))
        return self.logits(self.head(pooled)).float()

    def losses(self, feats: Mapping[str, torch.Tensor], targets: Sequence[dict[str, torch.Tensor]],
               image_sizes: Sequence[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """``loss_roi_cls``: cross-entropy over every ground-truth box and its jittered copies."""
        boxes = [jittered_boxes(t["boxes"].float(), self.copies, self.jitter, size)
                 for t, size in zip(targets, image_sizes)]
        labels = torch.cat([t["labels"].repeat(1 + self.copies) for t in targets])  # copy-major, as the boxes
        if len(labels) == 0:  # no things in the batch: a zero that still reaches every parameter (DDP)
            zero = sum(p.sum() for p in self.parameters()) * 0.0
            return {"loss_roi_cls": zero, **({"loss_roi_mask": zero} if self.mask_head is not None else {})}
        losses = {"loss_roi_cls": self.loss_weight * F.cross_entropy(self(feats, boxes, image_sizes), labels)}
        if self.mask_head is not None:
            losses["loss_roi_mask"] = self.mask_loss_weight * self.mask_loss(feats, targets, image_sizes)
        return losses

    def mask_loss(self, feats: Mapping[str, torch.Tensor], targets: Sequence[dict[str, torch.Tensor]],
                  image_sizes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Mask R-CNN's loss (torchvision's ``maskrcnn_loss``: per-pixel BCE of the ground-truth class's
        28x28 mask) on the ground-truth boxes, not their jittered copies (the head's cost grows with the
        RoI count)."""
        boxes = [t["boxes"].float() for t in targets]
        pooled = self.mask_pool(dict(feats), boxes, list(image_sizes))
        logits = self.mask_predictor(self.mask_head(pooled)).float()
        index = [torch.arange(len(b), device=b.device) for b in boxes]
        return maskrcnn_loss(logits, boxes, [t["masks"] for t in targets], [t["labels"] for t in targets], index)

    @torch.no_grad()
    def relabel(self, feats: Mapping[str, torch.Tensor], boxes: Sequence[torch.Tensor],
                image_sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """(N_i,) class of each image's boxes (argmax of the logits)."""
        labels = self(feats, boxes, image_sizes).argmax(1)
        return list(labels.split([len(b) for b in boxes]))


__all__ = ["RoIClassifier", "jittered_boxes"]
