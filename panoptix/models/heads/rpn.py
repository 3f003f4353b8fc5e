"""The region proposal network shared by the Mask R-CNN family (Mask R-CNN, the cascade, HTC): one
``rpn:`` config section, torchvision's `RegionProposalNetwork` underneath (not re-implemented).

Two departures from torchvision's defaults, both detectron2's behaviour:
- anchors use the fixed strides 4..64 of P2..P6; torchvision derives a level's stride from the
  padded image size (a 96 px batch puts P6 anchors at stride 48);
- box geometry stays float32 under autocast: anchors are generated in float32, and the RPN head's
  outputs are cast to float32 before decoding and NMS (in float16 a box coordinate near 1000 px has a
  resolution of 0.5 px and offsets round away).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

from panoptix.registry import Configurable

FPN_STRIDES = (4, 8, 16, 32, 64)


class FixedStrideAnchorGenerator(AnchorGenerator):
    """torchvision's `AnchorGenerator` with fixed per-level strides and float32 anchors.

    Forward: (`ImageList`, feature maps) -> one (sum_l H_l W_l A, 4) float32 anchor tensor per image.
    """

    def __init__(self, sizes: Sequence[Sequence[int]], aspect_ratios: Sequence[Sequence[float]],
                 strides: Sequence[int] = FPN_STRIDES) -> None:
        super().__init__(tuple(tuple(s) for s in sizes), tuple(tuple(a) for a in aspect_ratios))
        if len(strides) != len(sizes):
            raise ValueError(f"{len(sizes)} anchor levels but {len(strides)} strides")
        self.strides = tuple(int(s) for s in strides)

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        grid_sizes = [list(f.shape[-2:]) for f in feature_maps]
        device = feature_maps[0].device
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        self.set_cell_anchors(torch.float32, device)
        per_level = self.grid_anchors(grid_sizes, strides)
        return [torch.cat(per_level) for _ in image_list.image_sizes]


def float32_outputs(module: nn.Module, inputs: object, output: object) -> object:
    """Forward hook: every tensor of a module's (nested list/tuple) output as float32."""
    if isinstance(output, torch.Tensor):
        return output.float()
    if isinstance(output, (list, tuple)):
        return type(output)(float32_outputs(module, inputs, o) for o in output)
    return output


class RPN(Configurable, RegionProposalNetwork):
    """torchvision's RPN on P2..P6 with fixed-stride float32 anchors (one size per level) and its
    head's outputs in float32. Defaults are Mask R-CNN's (He et al. 2017; torchvision/detectron2).

    Args:
        in_channels: FPN width (from the head that owns the RPN).
        anchor_sizes: one anchor size per pyramid level P2..P6.
        aspect_ratios: anchor aspect ratios at every level.
        fg_iou, bg_iou: anchor IoU at or above which an anchor is foreground, below which background.
        batch_size, positive_fraction: anchors sampled per image for the loss, and their positive share.
        pre_nms_train, pre_nms_test: proposals kept per level before NMS.
        post_nms_train, post_nms_test: proposals kept per image after NMS.
        nms: the proposals' NMS IoU.

    Forward: torchvision's: ``(ImageList, {level: (B, C, H_l, W_l)}, targets)`` -> (one (P_i, 4)
    proposal tensor per image, losses ``loss_objectness`` and ``loss_rpn_box_reg`` when training).
    """

    derived = ("in_channels",)

    def __init__(self, in_channels: int, anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
                 aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), fg_iou: float = 0.7, bg_iou: float = 0.3,
                 batch_size: int = 256, positive_fraction: float = 0.5, pre_nms_train: int = 2000,
                 pre_nms_test: int = 1000, post_nms_train: int = 2000, post_nms_test: int = 1000,
                 nms: float = 0.7) -> None:
        if len(anchor_sizes) != len(FPN_STRIDES):
            raise ValueError(f"rpn.anchor_sizes needs one size per level P2..P6 ({len(FPN_STRIDES)}), "
                             f"got {len(anchor_sizes)}")
        anchors = FixedStrideAnchorGenerator([(int(s),) for s in anchor_sizes], [tuple(aspect_ratios)] * 5)
        super().__init__(anchors, RPNHead(in_channels, anchors.num_anchors_per_location()[0]), fg_iou, bg_iou,
                         batch_size, positive_fraction, dict(training=pre_nms_train, testing=pre_nms_test),
                         dict(training=post_nms_train, testing=post_nms_test), nms)
        self.head.register_forward_hook(float32_outputs)
