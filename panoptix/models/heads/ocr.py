"""Object-contextual representations (OCR; Yuan et al., ECCV 2020; spec section 7) and HRNet's plain
segmentation head ("fcn"), the decoders of AinnoSeg's scene parsing system.

OCR: soft object regions M (an auxiliary classifier), object region representations f_k (pixels
averaged with weights softmax over pixels of M_k), pixel-region relation w_ik = softmax_k(q_i . k_k /
sqrt(d)), object contextual representation y_i = rho(sum_k w_ik delta(f_k)), augmented representation
z_i = g([x_i; y_i]) and a 1x1 classifier. References: HRNet ``lib/models/seg_hrnet_ocr.py``, mmseg
``decode_heads/ocr_head.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from panoptix.models.heads.danet import conv_bn_relu
from panoptix.registry import DECODE_HEADS, Configurable


def _projection(in_channels: int, out_channels: int, layers: int) -> nn.Sequential:
    """``layers`` x (1x1 conv -> BN -> ReLU): OCR's phi, psi (2 layers), delta and rho (1 layer)."""
    return nn.Sequential(*[conv_bn_relu(in_channels if i == 0 else out_channels, out_channels, 1)
                           for i in range(layers)])


def object_region_representations(features: torch.Tensor, region_logits: torch.Tensor) -> torch.Tensor:
    """f_k = sum_i softmax_i(M_k)_i x_i: (B, C, H, W) features, (B, K, H, W) logits -> (B, C, K, 1)."""
    weights = torch.softmax(region_logits.flatten(2).float(), dim=2).to(features.dtype)  # over pixels
    return (features.flatten(2) @ weights.transpose(1, 2)).unsqueeze(-1)


@DECODE_HEADS.register("ocr")
class OCRHead(Configurable, nn.Module):
    """OCR decoder on a (B, C_in, H, W) map.

    Args:
        in_channels: input width (HRNet-W48's 720, or DANet's 512 in AinnoSeg's wiring).
        num_classes: K.
        channels: width of the pixel representation X and of the output (512).
        key_channels: width of the pixel-region relation and of the object context (256).
        dropout: Dropout2d after the augmented representation (0.05).
        loss_weight: weight of the cross-entropy on the final logits (1.0).
        aux_loss_weight: weight of the cross-entropy on the soft object regions (OCR: 0.4; AinnoSeg, Wu et al.
            2020: 0.3).

    Forward: x -> dict ``feature`` (B, channels, H, W) (augmented representation), ``logits``
    (B, K, H, W), ``aux_logits`` (B, K, H, W) (soft object regions).
    """

    derived = ("in_channels", "num_classes")

    def __init__(self, in_channels: int, num_classes: int, channels: int = 512, key_channels: int = 256,
                 dropout: float = 0.05, loss_weight: float = 1.0, aux_loss_weight: float = 0.4) -> None:
        super().__init__()
        self.loss_weights = {"logits": float(loss_weight), "aux_logits": float(aux_loss_weight)}
        self.out_channels = channels
        self.soft_regions = nn.Sequential(conv_bn_relu(in_channels, in_channels, 1),
                                          nn.Conv2d(in_channels, num_classes, 1))
        self.pixels = conv_bn_relu(in_channels, channels, 3)
        self.query = _projection(channels, key_channels, 2)   # phi
        self.key = _projection(channels, key_channels, 2)     # psi
        self.value = _projection(channels, key_channels, 1)   # delta
        self.context = _projection(key_channels, channels, 1)  # rho
        self.augment = nn.Sequential(conv_bn_relu(2 * channels, channels, 1), nn.Dropout2d(dropout))
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.key_channels = key_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        aux_logits = self.soft_regions(x)
        pixels = self.pixels(x)
        regions = object_region_representations(pixels, aux_logits)  # (B, C, K, 1)
        b, _, h, w = pixels.shape
        q = self.query(pixels).flatten(2).transpose(1, 2)  # (B, HW, d)
        k = self.key(regions).flatten(2)  # (B, d, K)
        v = self.value(regions).flatten(2).transpose(1, 2)  # (B, K, d)
        relation = torch.softmax((q @ k).float() * self.key_channels ** -0.5, dim=-1).to(v.dtype)  # (B, HW, K)
        context = self.context((relation @ v).transpose(1, 2).reshape(b, -1, h, w))
        feature = self.augment(torch.cat([pixels, context], dim=1))
        return {"feature": feature, "logits": self.classifier(feature), "aux_logits": aux_logits}


@DECODE_HEADS.register("fcn")
class FCNHead(Configurable, nn.Module):
    """HRNet's segmentation head: 1x1 conv-BN-ReLU at the input width, then a 1x1 classifier.

    Forward: (B, C_in, H, W) -> dict ``feature`` (B, C_in, H, W), ``logits`` (B, K, H, W).
    """

    derived = ("in_channels", "num_classes")

    def __init__(self, in_channels: int, num_classes: int, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weights = {"logits": float(loss_weight)}
        self.out_channels = in_channels
        self.hidden = conv_bn_relu(in_channels, in_channels, 1)
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feature = self.hidden(x)
        return {"feature": feature, "logits": self.classifier(feature)}


__all__ = ["OCRHead", "FCNHead", "object_region_representations"]
