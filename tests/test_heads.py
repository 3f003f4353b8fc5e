"""Neck and semantic heads: shapes, deformable layers starting as plain convolutions, the loss,
one class per head kind (FPN, deformable, OANet's stuff head), heads returning (results, losses)."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from panoptix.models.heads.oanet_stuff import OANetStuffHead
from panoptix.models.heads.semantic import DeformableSemanticHead, FPNSemanticHead, semantic_loss
from panoptix.models.layers import DeformConv3x3
from panoptix.models.necks import FPN
from panoptix.models.postprocess import resize_semantic_logits
from panoptix.registry import SEMANTIC_HEADS, build


def _feats(b=2, h=64, w=96):
    chans = [16, 32, 64, 128]
    return OrderedDict((f"c{i + 2}", torch.rand(b, c, h // 2 ** (i + 2), w // 2 ** (i + 2)))
                       for i, c in enumerate(chans))


@pytest.mark.parametrize("deformable", [(), ("p3", "p4", "p5")])
def test_fpn_levels(deformable):
    fpn = FPN([16, 32, 64, 128], 32, deformable)
    out = fpn(_feats())
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
    assert [tuple(v.shape[2:]) for v in out.values()] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    assert sum(isinstance(m, DeformConv3x3) for m in fpn.modules()) == len(deformable)


def test_fpn_rejects_bad_levels():
    with pytest.raises(ValueError, match="p2..p5"):
        FPN([16, 32, 64, 128], 32, ("p6",))


def test_deform_conv_starts_as_plain_conv():
    torch.manual_seed(0)
    d = DeformConv3x3(8, 4)
    x = torch.rand(1, 8, 10, 12)
    plain = F.conv2d(x, d.conv.weight, d.conv.bias, padding=1)
    assert torch.allclose(d(x), plain, atol=1e-5)
    d(x).sum().backward()
    assert d.offset.weight.grad is not None  # offsets are learned


@pytest.mark.parametrize("name,cls", [("fpn", FPNSemanticHead), ("deformable", DeformableSemanticHead),
                                      ("oanet", OANetStuffHead)])
def test_semantic_heads_return_logits_and_their_loss(name, cls):
    torch.manual_seed(0)
    fpn = FPN([16, 32, 64, 128], 32)
    head = build(SEMANTIC_HEADS, {"name": name, "channels": 16}, in_channels=32, num_classes=5)
    assert type(head) is cls
    feats = fpn(_feats())
    logits, losses = head(feats)
    assert logits.shape == (2, 5, 16, 24) and losses == {}
    target = torch.randint(0, 5, (2, 64, 96))
    target[:, :10] = 255
    logits2, losses = head(feats, target)
    assert torch.equal(logits, logits2)
    assert set(losses) == {"loss_seg"}
    expected = head.loss_weight * F.cross_entropy(F.interpolate(logits, size=(64, 96), mode="bilinear"), target,
                                                  ignore_index=255)
    assert torch.isclose(losses["loss_seg"], expected, rtol=1e-5)


def test_oanet_stuff_head_layout():
    """OANet (Liu et al. 2019) Fig. 3: two shared 3x3 convs per level, concatenation, a 3x3 conv, a 1x1 classifier."""
    head = OANetStuffHead(32, num_classes=7, channels=16)
    assert [m.kernel_size for m in head.shared.modules() if isinstance(m, torch.nn.Conv2d)] == [(3, 3), (3, 3)]
    assert head.fuse[0].in_channels == 4 * 16 and head.fuse[0].kernel_size == (3, 3)
    assert head.classifier.kernel_size == (1, 1) and head.loss_weight == 0.25  # OANet Table 1


def test_unknown_semantic_head_lists_the_registered_ones():
    from panoptix.config import ConfigError

    with pytest.raises(ConfigError, match=r"unknown semantic head 'aspp'; registered semantic heads: "
                                          r"deformable, fpn, htc_fused, oanet"):
        build(SEMANTIC_HEADS, {"name": "aspp"}, in_channels=32, num_classes=5)
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) head.deform_convs for FPNSemanticHead; valid "
                                          r"keys: channels, loss_weight"):
        build(SEMANTIC_HEADS, {"name": "fpn", "deform_convs": 2}, "head", in_channels=32, num_classes=5)


def test_semantic_loss_ignores_void():
    logits = torch.zeros(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 16, 16), 255, dtype=torch.int64)
    loss = semantic_loss(logits, target)
    assert loss.item() == 0.0
    loss.backward()
    target[0, :8] = 1
    expected = torch.log(torch.tensor(3.0))  # uniform logits: -log(1/3) on the labelled half only
    assert torch.isclose(semantic_loss(logits, target, weight=0.25), 0.25 * expected)


def test_resize_semantic_logits_crops_padding():
    logits = torch.zeros(2, 8, 8)
    logits[1, :, :5] = 1.0  # real image occupies the left 20 px of a 32 px padded batch
    out = resize_semantic_logits(logits, crop=(32, 20), size=(64, 40))
    assert out.shape == (2, 64, 40)
    assert (out[1] > 0.5).float().mean() > 0.95
