"""Mask R-CNN instance branch on a shared FPN, assembled from torchvision's RPN, RoIHeads and
MultiScaleRoIAlign (not re-implemented). Thing classes come from `DatasetMeta` (contiguous thing
index ``k`` is torchvision label ``k + 1``; 0 is background).

The RPN is `panoptix.models.heads.rpn.RPN` (its ``rpn:`` sub-section). As there, box geometry stays
float32 under autocast: the box predictor's outputs are cast to float32 before decoding and NMS
(detectron2's behaviour).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import MultiScaleRoIAlign

from panoptix.models.heads.rpn import RPN, float32_outputs
from panoptix.models.layers import group_norm
from panoptix.models.roi_align import MatmulMultiScaleRoIAlign, SparseMultiScaleRoIAlign
from panoptix.registry import ROI_HEADS, Configurable
from panoptix.structures import Instances

_POOLED_LEVELS = ["p2", "p3", "p4", "p5"]


#: ``roi_align`` settings of the RoI heads: torchvision's kernel everywhere, or `panoptix.models.roi_align`'s
#: dense (``matmul``) or sparse (``sparse``: the default; torchvision's kernel off the CPU) matrix products.
ROI_ALIGN_POOLERS = {"torchvision": MultiScaleRoIAlign, "matmul": MatmulMultiScaleRoIAlign,
                     "sparse": SparseMultiScaleRoIAlign}
RoIAlignName = Literal["torchvision", "matmul", "sparse"]


def _roi_pool(roi_align: str, output_size: int) -> nn.Module:
    if roi_align not in ROI_ALIGN_POOLERS:
        raise ValueError(f"roi_align must be one of {sorted(ROI_ALIGN_POOLERS)}, got {roi_align!r}")
    return ROI_ALIGN_POOLERS[roi_align](_POOLED_LEVELS, output_size=output_size, sampling_ratio=2)


def box_roi_pool(roi_align: str = "sparse") -> nn.Module:
    """The 7x7 box RoIAlign over P2..P5 with Mask R-CNN's level mapping (`ROI_ALIGN_POOLERS`)."""
    return _roi_pool(roi_align, 7)


def mask_roi_pool(roi_align: str = "sparse") -> nn.Module:
    """The 14x14 mask RoIAlign over P2..P5 with Mask R-CNN's level mapping (`ROI_ALIGN_POOLERS`)."""
    return _roi_pool(roi_align, 14)


def roi_pools(roi_align: str) -> tuple[nn.Module, nn.Module]:
    """The 7x7 box and 14x14 mask RoIAlign over P2..P5 (`ROI_ALIGN_POOLERS`)."""
    return box_roi_pool(roi_align), mask_roi_pool(roi_align)


def build_mask_head(in_channels: int, conv_dim: int, convs: int, num_classes: int,
                    norm: Callable[[int], nn.Module] | None = None) -> tuple[nn.Module, nn.Module]:
    """Mask R-CNN's mask head and predictor: (R, C, 14, 14) -> ``convs`` 3x3 convs of ``conv_dim``, then a
    2x deconvolution and a 1x1 to (R, num_classes, 28, 28) logits."""
    return (MaskRCNNHeads(in_channels, [conv_dim] * convs, 1, norm_layer=norm),
            MaskRCNNPredictor(conv_dim, conv_dim, num_classes))


def head_norm_layer(head_norm: str) -> Callable[[int], nn.Module] | None:
    if head_norm not in ("", "gn"):
        raise ValueError(f"head_norm must be '' or 'gn', got {head_norm!r}")
    return group_norm if head_norm == "gn" else None


def build_box_head(in_channels: int, fc_dim: int, convs: int, norm: Callable[[int], nn.Module] | None
                   ) -> nn.Module:
    """(R, C, 7, 7) -> (R, fc_dim): Mask R-CNN's 2-fc head, or ``convs`` convs + 1 fc."""
    if convs:
        return FastRCNNConvFCHead((in_channels, 7, 7), [in_channels] * convs, [fc_dim], norm_layer=norm)
    return TwoMLPHead(in_channels * 7 * 7, fc_dim)


@ROI_HEADS.register("mask_rcnn")
class MaskRCNNBranch(Configurable, nn.Module):
    """RPN + box head + mask head. Defaults are Mask R-CNN's (He et al.; torchvision/detectron2).

    Args:
        in_channels: FPN width.
        num_things: thing classes (background is added here).
        rpn: the region proposal network (`RPN`: anchors, sampling, NMS and proposal counts); None
            builds it with Mask R-CNN's defaults. In a config, the ``rpn:`` sub-section.
        box_*: RoI sampling and inference settings of the box head.
        box_fc_dim: width of the fully connected layers.
        box_convs: 0 gives Mask R-CNN's 2-fc box head; k > 0 a k-conv + 1-fc head (detectron2's
            "4conv1fc", used with ``head_norm="gn"`` to train from scratch, He et al. 2019).
        mask_conv_dim, mask_convs: the mask head's conv tower.
        head_norm: ``""`` or ``"gn"`` (GroupNorm in the box and mask conv towers).
        roi_align: ``"sparse"`` (`SparseMultiScaleRoIAlign`: torchvision's numbers as one sparse matrix
            product on the CPU, forward and backward about 3-4x faster than its kernel there; its kernel
            on a GPU), ``"torchvision"`` (its kernel) or ``"matmul"`` (dense products, for small images).

    Forward (``images`` is the padded batch, ``features`` the FPN levels p2..p6):
        training: ``(detections=[], losses)`` with losses ``loss_objectness``, ``loss_rpn_box_reg``,
        ``loss_classifier``, ``loss_box_reg``, ``loss_mask``;
        inference: ``([Instances in resized-image coordinates, masks (N, 1, 28, 28) probabilities], {})``.
    """

    derived = ("in_channels", "num_things")
    components = {"rpn": (RPN, {})}

    def __init__(self, in_channels: int, num_things: int, rpn: RPN | None = None,
                 box_fg_iou: float = 0.5, box_bg_iou: float = 0.5, box_batch_size: int = 512,
                 box_positive_fraction: float = 0.25, box_score_thresh: float = 0.05, box_nms: float = 0.5,
                 detections_per_img: int = 100, box_fc_dim: int = 1024, box_convs: int = 0,
                 mask_conv_dim: int = 256, mask_convs: int = 4, head_norm: str = "",
                 roi_align: RoIAlignName = "sparse") -> None:
        super().__init__()
        self.rpn = rpn if rpn is not None else RPN(in_channels)
        box_pool, mask_pool = roi_pools(roi_align)
        norm = head_norm_layer(head_norm)
        box_head = build_box_head(in_channels, box_fc_dim, box_convs, norm)
        mask_head, mask_predictor = build_mask_head(in_channels, mask_conv_dim, mask_convs, num_things + 1, norm)
        self.roi_heads = RoIHeads(
            box_pool, box_head, FastRCNNPredictor(box_fc_dim, num_things + 1),
            box_fg_iou, box_bg_iou, box_batch_size, box_positive_fraction, None, box_score_thresh, box_nms,
            detections_per_img, mask_roi_pool=mask_pool, mask_head=mask_head, mask_predictor=mask_predictor)
        self.num_things = num_things
        self.roi_heads.box_predictor.register_forward_hook(float32_outputs)

    def forward(self, images: ImageList, features: Mapping[str, torch.Tensor],
                targets: list[dict[str, torch.Tensor]] | None = None
                ) -> tuple[list[Instances], dict[str, torch.Tensor]]:
        tv_targets = None
        if targets is not None:
            tv_targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1, "masks": t["masks"]} for t in targets]
        proposals, rpn_losses = self.rpn(images, dict(features), tv_targets)
        detections, roi_losses = self.roi_heads(dict(features), proposals, images.image_sizes, tv_targets)
        if self.training:
            return [], {**rpn_losses, **roi_losses}
        return [Instances(d["boxes"], d["scores"], d["labels"] - 1, d["masks"], image_size=tuple(size))
                for d, size in zip(detections, images.image_sizes)], {}

    @property
    def nms_thresh(self) -> float:
        """The class-wise NMS IoU of inference (what TTA's box voting re-applies)."""
        return float(self.roi_heads.nms_thresh)

    @property
    def detections_per_img(self) -> int:
        return int(self.roi_heads.detections_per_img)

    @torch.no_grad()
    def detect_boxes(self, images: ImageList, features: Mapping[str, torch.Tensor]) -> list[Instances]:
        """Detections without masks (box branch only: what test-time augmentation merges across
        views before it re-predicts the masks), in resized-image coordinates."""
        feats = dict(features)
        proposals, _ = self.rpn(images, feats)
        h = self.roi_heads
        logits, deltas = h.box_predictor(h.box_head(h.box_roi_pool(feats, proposals, images.image_sizes)))
        boxes, scores, labels = h.postprocess_detections(logits, deltas, proposals, images.image_sizes)
        return [Instances(b, s, lab - 1, None, image_size=tuple(size))
                for b, s, lab, size in zip(boxes, scores, labels, images.image_sizes)]

    def mask_logits_for_boxes(self, images: ImageList, features: Mapping[str, torch.Tensor],
                              boxes: list[torch.Tensor], labels: list[torch.Tensor]) -> list[torch.Tensor]:
        """The mask head's logits of given classes on given boxes (UPSNet's and the ranking head's
        ground-truth instances), differentiable.

        Args:
            boxes: per image (N_i, 4) xyxy in padded-batch pixels.
            labels: per image (N_i,) contiguous thing indices.

        Returns:
            per image (N_i, M, M) logits of the labelled class (M = 28).
        """
        counts = [len(b) for b in boxes]
        if sum(counts) == 0:
            ref = features["p2"]
            return [ref.new_zeros((0, 28, 28)) for _ in boxes]
        heads = self.roi_heads
        x = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(dict(features), [b.float() for b in boxes],
                                                                     images.image_sizes)))
        lab = torch.cat(labels) + 1
        picked = x[torch.arange(len(lab), device=x.device), lab].float()
        return list(picked.split(counts))
