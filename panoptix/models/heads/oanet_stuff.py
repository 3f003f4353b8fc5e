"""OANet's stuff branch (OANet, Liu et al. 2019, section 3.1 and Fig. 3).

The paper: "two 3x3 convolution layers are stacked on RPN feature maps. For the sake of
multi-scale feature extraction, we then concatenate these layers with succeeding one 3x3
convolution layer and 1x1 convolution layer." Our reading, stated because the text is terse: the
"RPN feature maps" are the FPN outputs P2-P5 (the 3x3-conv outputs the RPN head also reads, which
is the "deep share" of Table 4); the two 3x3 conv layers are shared across levels as the RPN head
is; each level's result is upsampled to 1/4 and the levels are concatenated; one 3x3 conv fuses
them and a 1x1 conv classifies. The convs are followed by GroupNorm and ReLU as in the other heads
(the paper does not name a norm). OANet supervises this branch on all classes (Table 2, the
system's ``semantic_variant: all``) and weighs its loss by lambda = 0.25 (Table 1).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from panoptix.models.heads.semantic import LEVELS, SemanticHead, upsample_concat
from panoptix.models.layers import ConvGNReLU
from panoptix.registry import SEMANTIC_HEADS


@SEMANTIC_HEADS.register("oanet")
class OANetStuffHead(SemanticHead):
    """Shared 2x conv3x3 on P2-P5 -> upsample to 1/4 -> concatenate -> conv3x3 -> conv1x1.

    Args:
        channels: width of the convolutions (128).
        loss_weight: lambda (0.25, OANet Table 1).

    Forward: ``{p2..p5}`` -> logits (B, num_classes, H/4, W/4) (and ``loss_seg`` given targets).
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 128, loss_weight: float = 0.25) -> None:
        super().__init__(num_classes, loss_weight)
        self.shared = nn.Sequential(ConvGNReLU(in_channels, channels), ConvGNReLU(channels, channels))
        self.fuse = ConvGNReLU(channels * len(LEVELS), channels)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def features(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.fuse(upsample_concat([self.shared(feats[level]) for level in LEVELS], feats["p2"].shape[-2:]))
