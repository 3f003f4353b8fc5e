"""AntVisionPS's "Location Sensitive Header" (AntVisionPS, Hong et al. 2019, E-UPS), in the spec's interpretation
(section 4; the paper gives only the claim): box regression and mask prediction both need spatial
detail, classification does not. So, per RoI head (one per cascade stage):

- classification: RoIAlign 7x7 -> 2 fc -> K + 1 logits (unchanged, CE);
- a shared location-sensitive trunk: RoIAlign 14x14 -> ``trunk_convs`` conv3x3-ReLU (the
  standard mask trunk), feeding both
  - the mask: deconv to 28x28 -> K + 1 logits (BCE on the positives), and
  - the box: conv3x3 stride 2 (7x7) -> global average pool -> fc -> 4 class-agnostic deltas
    (smooth L1 on the positives).

In training the trunk runs on every sampled RoI (regression needs them all) and the mask loss is
taken on the positive subset, so the mask loss shapes the regression features: the intended
sharing. At inference the box branch runs on the proposals and the trunk again on the final boxes
for the masks (one trunk, two passes). Double-Head R-CNN (mmdet ``double_bbox_head.py``) is the
closest published design.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from panoptix.models.heads.rpn import float32_outputs


class LocationSensitiveHeader(nn.Module):
    """Classification on a 7x7 fc branch; regression and mask on one shared 14x14 conv trunk.

    Args:
        in_channels: RoI feature channels.
        num_classes: K + 1 (background included).
        cls_head: (R, C, 7, 7) -> (R, fc_dim), the classification branch's body.
        fc_dim: its width and the regression branch's fc width.
        trunk_dim, trunk_convs: the shared trunk (256, 4).
        norm: optional norm layer factory for the trunk (GroupNorm for from-scratch models).
        with_mask: whether this header predicts masks (a cascade stage outside ``mask_stages``
            still regresses from its trunk).

    ``boxes(box_roi (R, C, 7, 7), mask_roi (R, C, 14, 14))`` -> logits (R, K + 1), deltas (R, 4),
    trunk (R, trunk_dim, 14, 14); ``mask_logits(mask_roi=None, trunk=None)`` -> (R, K + 1, 28, 28).
    """

    needs_mask_roi = True

    def __init__(self, in_channels: int, num_classes: int, cls_head: nn.Module, fc_dim: int, trunk_dim: int = 256,
                 trunk_convs: int = 4, norm: Callable[[int], nn.Module] | None = None,
                 with_mask: bool = True) -> None:
        super().__init__()
        self.cls_head = cls_head
        self.cls_score = nn.Linear(fc_dim, num_classes)
        self.trunk = MaskRCNNHeads(in_channels, [trunk_dim] * trunk_convs, 1, norm_layer=norm)
        self.reg_conv = nn.Sequential(nn.Conv2d(trunk_dim, trunk_dim, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.reg_fc = nn.Sequential(nn.Linear(trunk_dim, fc_dim), nn.ReLU(inplace=True))
        self.bbox_pred = nn.Linear(fc_dim, 4)
        self.mask_predictor = MaskRCNNPredictor(trunk_dim, trunk_dim, num_classes) if with_mask else None
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)
        nn.init.kaiming_normal_(self.reg_conv[0].weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.reg_conv[0].bias)
        self.cls_score.register_forward_hook(float32_outputs)
        self.bbox_pred.register_forward_hook(float32_outputs)

    def boxes(self, box_roi: torch.Tensor, mask_roi: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.cls_score(self.cls_head(box_roi).flatten(1))
        trunk = self.trunk(mask_roi)
        deltas = self.bbox_pred(self.reg_fc(self.reg_conv(trunk).mean((2, 3))))
        return logits, deltas, trunk

    def mask_logits(self, mask_roi: torch.Tensor | None = None, trunk: torch.Tensor | None = None
                    ) -> torch.Tensor:
        if self.mask_predictor is None:
            raise RuntimeError("this header has no mask predictor (its stage is not in mask_stages)")
        return self.mask_predictor(self.trunk(mask_roi) if trunk is None else trunk)


__all__ = ["LocationSensitiveHeader"]
