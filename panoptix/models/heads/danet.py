"""DANet's dual attention head (Fu et al., CVPR 2019; spec section 6): a position attention module
(PAM) and a channel attention module (CAM) in parallel on one feature map, each with a zero-initialised
gamma, summed, with three classifiers (fused, PAM-only, CAM-only).

In AinnoSeg's wiring (spec, open question 7) the head sits on HRNet's concatenated features; its
fused 512-channel feature feeds OCR and its fused logits are the auxiliary "DA output".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from panoptix.registry import CONTEXT_HEADS, Configurable


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    """conv (no bias) -> BatchNorm -> ReLU; SyncBatchNorm under DDP (the trainer converts it)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def classifier(in_channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Dropout2d + 1x1 conv to class logits (DANet's ``conv6/7/8``)."""
    return nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(in_channels, num_classes, 1))


class PositionAttention(nn.Module):
    """PAM: out = gamma * V softmax(Q^T K)^T + x, energy unscaled (DANet's code), gamma starting at 0.

    Shapes: (B, C, H, W) -> (B, C, H, W); Q and K have ``C // reduction`` channels.
    """

    def __init__(self, channels: int, key_channels: int) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, key_channels, 1)
        self.key = nn.Conv2d(channels, key_channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, HW, C')
        k = self.key(x).flatten(2).transpose(1, 2)
        v = self.value(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        # out_i = sum_j softmax_j(q_i . k_j) v_j, with no 1/sqrt(d): one fused attention call, which on
        # a GPU need not hold the (HW x HW) energy of a stride-4 map.
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=1.0)
        return self.gamma * out.squeeze(1).transpose(1, 2).reshape(b, c, h, w) + x


class ChannelAttention(nn.Module):
    """CAM: E = X X^T (C x C), A = softmax(max_row(E) - E) (DANet's "max minus" form), out = gamma A X + x.

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # float32: E sums HW products (16,900 at a 520 px crop's stride 4), beyond float16's range
        with torch.autocast(x.device.type, enabled=False):
            flat = x.flatten(2).float()  # (B, C, HW)
            energy = flat @ flat.transpose(1, 2)  # (B, C, C)
            attention = torch.softmax(energy.amax(-1, keepdim=True) - energy, dim=-1)
            out = (attention @ flat).view(b, c, h, w)
        return self.gamma * out.to(x.dtype) + x


@CONTEXT_HEADS.register("danet")
class DANetHead(Configurable, nn.Module):
    """Dual attention on a (B, C_in, H, W) map.

    Args:
        in_channels: input width (HRNet-W48's concatenation: 720).
        num_classes: K.
        channels: width of both branches (DANet: 512, i.e. C5's 2048 / 4).
        key_channels: PAM's query/key width (DANet and mmseg: 64).
        dropout: Dropout2d before each classifier (0.1).
        loss_weight: weight of the cross-entropy on the fused logits (DANet: 1.0; AinnoSeg (Wu et al. 2020), where OCR
            follows: 0.1).
        aux_loss_weight: weight of each of the PAM-only and CAM-only cross-entropies (DANet and
            mmseg: 1.0, the same as the fused one; AinnoSeg (Wu et al. 2020): 0.1, read as the same "DA output" weight).

    Forward: x -> dict ``feature`` (B, channels, H, W) (the two branches summed), ``logits`` (B, K, H, W)
    (fused), ``pam_logits`` and ``cam_logits`` (B, K, H, W).
    """

    derived = ("in_channels", "num_classes")

    def __init__(self, in_channels: int, num_classes: int, channels: int = 512, key_channels: int = 64,
                 dropout: float = 0.1, loss_weight: float = 1.0, aux_loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weights = {"logits": float(loss_weight), "pam_logits": float(aux_loss_weight),
                             "cam_logits": float(aux_loss_weight)}
        self.out_channels = channels
        self.reduce_pam = conv_bn_relu(in_channels, channels)
        self.reduce_cam = conv_bn_relu(in_channels, channels)
        self.pam = PositionAttention(channels, key_channels)
        self.cam = ChannelAttention()
        self.after_pam = conv_bn_relu(channels, channels)
        self.after_cam = conv_bn_relu(channels, channels)
        self.classifier = classifier(channels, num_classes, dropout)
        self.pam_classifier = classifier(channels, num_classes, dropout)
        self.cam_classifier = classifier(channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        pam = self.after_pam(self.pam(self.reduce_pam(x)))
        cam = self.after_cam(self.cam(self.reduce_cam(x)))
        fused = pam + cam
        return {"feature": fused, "logits": self.classifier(fused),
                "pam_logits": self.pam_classifier(pam), "cam_logits": self.cam_classifier(cam)}


__all__ = ["DANetHead", "PositionAttention", "ChannelAttention", "conv_bn_relu", "classifier"]
