"""Hybrid Task Cascade: the mask information flow (stage t's mask sees stage t-1's feature, and
the chain is re-run on stage t's RoIs), interleaved re-sampling of the refined boxes, semantic
fusion into box and mask RoI features, and the panoptic system with the fused semantic head."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torchvision
from torchvision.models.detection.image_list import ImageList

from panoptix.config import load_config
from panoptix.data.datasets import PanopticDataset
from panoptix.data.targets import build_targets
from panoptix.losses import total_loss
from panoptix.models.heads.htc import HybridTaskCascade
from panoptix.models.heads.htc_semantic import FusedSemanticHead
from panoptix.models.heads.rpn import RPN
from panoptix.registry import ConfigError
from panoptix.structures import PanopticResult

from conftest import image_batch, seeded_model


def tiny() -> dict:
    """A tiny head's keywords (a fresh RPN each call, built first as from a config)."""
    return dict(rpn=RPN(8, anchor_sizes=[8, 16, 32, 64, 128], pre_nms_test=50, post_nms_test=20), box_batch_size=16,
                box_fc_dim=16, mask_conv_dim=8, mask_convs=1)


def _feats(c=8, h=64, w=64):
    torch.manual_seed(0)
    return OrderedDict((f"p{i}", torch.randn(1, c, h // 2 ** i, w // 2 ** i)) for i in range(2, 7))


def test_mask_information_flow_chains_the_previous_heads():
    torch.manual_seed(0)
    head = HybridTaskCascade(8, 2, **tiny(), semantic_fusion=[]).eval()
    roi = torch.randn(3, 8, 14, 14)
    f0 = head.stages[0].header.mask_head(roi)
    f1 = head.stages[1].header.mask_head(roi + head.mask_residuals[1](f0))
    f2 = head.stages[2].header.mask_head(roi + head.mask_residuals[2](f1))
    expected = head.stages[2].header.mask_predictor(f2)
    assert torch.allclose(head.mask_chain(roi, 2)[0], expected, atol=1e-6)
    # without the flow every head sees the plain RoI features
    head.mask_info_flow = False
    assert torch.allclose(head.mask_chain(roi, 2)[0], head.stages[2].header.mask_predictor(
        head.stages[2].header.mask_head(roi)), atol=1e-6)
    # the stage-2 mask loss trains the stage-0 and stage-1 heads through the flow
    head.mask_info_flow = True
    head.mask_chain(roi, 2)[0].sum().backward()
    assert head.stages[0].header.mask_head[0][0].weight.grad.abs().sum() > 0
    assert head.stages[0].header.mask_predictor.mask_fcn_logits.weight.grad is None


def test_semantic_feature_is_added_to_box_and_mask_rois():
    torch.manual_seed(0)
    feats = _feats()
    head = HybridTaskCascade(8, 2, **tiny())
    boxes = [torch.tensor([[8.0, 8.0, 40.0, 24.0]])]
    semantic = torch.zeros(1, 8, 8, 8)
    semantic[..., 0:5, 0:7] = 2.0   # the box spans x 1..5, y 1..3 of the stride-8 grid, inside this block
    plain_box = head.box_pool(feats, boxes, [(64, 64)])
    plain_mask = head.mask_pool(feats, boxes, [(64, 64)])
    box = head.rois(feats, boxes, [(64, 64)], semantic, "bbox")
    mask = head.rois(feats, boxes, [(64, 64)], semantic, "mask")
    assert torch.allclose(mask - plain_mask, torch.full_like(mask, 2.0), atol=1e-5)
    assert torch.allclose(box - plain_box, torch.full_like(box, 2.0), atol=1e-5)
    with pytest.raises(ValueError, match="semantic head's feature"):
        head.eval()(ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)]), feats)


@pytest.mark.parametrize("kernel", ["torchvision", "matmul", "sparse"])
def test_semantic_rois_pool_with_the_heads_kernel_and_torchvisions_numbers(kernel):
    torch.manual_seed(0)
    head = HybridTaskCascade(8, 2, **tiny(), roi_align=kernel)
    semantic = torch.randn(2, 8, 8, 8, requires_grad=True)
    boxes = [torch.tensor([[3.0, 5.0, 40.0, 24.0], [0.0, 0.0, 63.0, 63.0]]), torch.tensor([[10.0, 12.0, 30.5, 50.0]])]
    grad = torch.randn(3, 8, 14, 14)
    reference = torchvision.ops.roi_align(semantic, boxes, 14, 1 / 8, 2)
    (expected_grad,) = torch.autograd.grad((reference * grad).sum(), semantic)
    pooled = head.semantic_roi(semantic, boxes)
    (pooled_grad,) = torch.autograd.grad((pooled * grad).sum(), semantic)
    assert torch.allclose(pooled, reference, atol=1e-5)
    assert torch.allclose(pooled_grad, expected_grad, atol=1e-5)
    if kernel != "torchvision":  # it pools through the mask pooler's kernel (torchvision's pooler has none)
        calls = []
        own = head.mask_pool.pool_level
        head.mask_pool.pool_level = lambda *args: calls.append(args) or own(*args)
        head.semantic_roi(semantic, boxes)
        assert len(calls) == 1


def test_interleaved_training_resamples_the_refined_boxes(monkeypatch):
    torch.manual_seed(0)
    feats = _feats()
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 10:30, 8:40] = 1
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 40.0, 30.0]]), "labels": torch.tensor([1]), "masks": masks}]
    calls = {}
    for interleaved in (True, False):
        head = HybridTaskCascade(8, 2, **tiny(), interleaved=interleaved, semantic_fusion=[]).train()
        n = []
        original = HybridTaskCascade.sample
        monkeypatch.setattr(HybridTaskCascade, "sample", lambda self, *a: n.append(1) or original(self, *a))
        losses = head.stage_losses(feats, [torch.tensor([[6.0, 8.0, 38.0, 28.0]])], [(64, 64)], targets, None)
        monkeypatch.setattr(HybridTaskCascade, "sample", original)
        calls[interleaved] = len(n)
        assert {f"loss_mask_s{t}" for t in range(3)} <= set(losses)
        assert all(torch.isfinite(v) for v in losses.values())
    assert calls == {True: 6, False: 3}


def test_fused_semantic_head_shapes():
    head = FusedSemanticHead(8, 5, channels=16, num_convs=2)
    logits, losses, feature = head.forward_with_feature(_feats(), torch.zeros(1, 64, 64, dtype=torch.int64))
    assert logits.shape == (1, 5, 16, 16) and feature.shape == (1, 8, 8, 8)
    assert set(losses) == {"loss_seg"} and losses["loss_seg"] > 0


def test_htc_refuses_a_semantic_head_without_a_feature_and_per_stage_mask_choices(synth_root):
    ds = PanopticDataset.synthetic(synth_root, "train")
    with pytest.raises(ValueError, match="htc_fused"):
        seeded_model(ds.meta, "panoptic_fpn_tiny", "model.instance_head.name=htc")
    with pytest.raises((ValueError, ConfigError), match="every stage"):
        seeded_model(ds.meta, "panoptic_fpn_tiny", "model.instance_head.name=htc", "model.semantic_head.name=htc_fused",
                     "model.instance_head.mask_stages=[1]")
    # the cascade's keywords reach HTC through **kwargs and are checked like its own
    with pytest.raises(ConfigError, match="interleaved: expected bool"):
        load_config("panoptic_fpn_tiny", ["model.instance_head.name=htc", "model.instance_head.interleaved=maybe"])
    with pytest.raises(ConfigError, match="stage_ious"):
        load_config("panoptic_fpn_tiny", ["model.instance_head.name=htc", "model.instance_head.stage_ious=high"])
    with pytest.raises(ConfigError, match="valid keys: .*interleaved.*rpn.*semantic_fusion"):
        load_config("panoptic_fpn_tiny", ["model.instance_head.name=htc", "model.instance_head.bogus=1"])


def test_panoptic_system_with_htc_and_the_fused_semantic_head(synth_root):
    ds = PanopticDataset.synthetic(synth_root, "train")
    model = seeded_model(ds.meta, "panoptic_fpn_tiny", "model.instance_head.name=htc",
                         "model.semantic_head={name: htc_fused, channels: 16, num_convs: 2, norm: gn}").train()
    samples, images = image_batch(ds)
    losses = model(images, [build_targets(s, ds.meta, "all") for s in samples])
    assert {"loss_mask_s2", "loss_seg"} <= set(losses)
    total_loss(losses).backward()
    assert model.semantic_head.embedding[0].weight.grad.abs().sum() > 0  # the fusion trains the semantic feature
    model.eval()
    results = model(images)
    assert all(isinstance(r, PanopticResult) for r in results)


def test_lwl_htc_dc_head_feeds_its_feature_to_htc(synth_root):
    ds = PanopticDataset.synthetic(synth_root, "train")
    model = seeded_model(ds.meta, "panoptic_fpn_tiny", "model.instance_head.name=htc", "model.semantic_variant=all",
                         "model.semantic_head={name: deformable, channels: 16, semantic_feature: true}").train()
    samples, images = image_batch(ds, 1)
    losses = model(images, [build_targets(samples[0], ds.meta, "all")])
    total_loss(losses).backward()
    assert model.semantic_head.embedding[0].weight.grad.abs().sum() > 0
