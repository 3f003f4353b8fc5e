"""Cascade Mask R-CNN: stage-wise box refinement and score averaging on constructed predictors,
stage loss weights, the refined RoIs handed to the next stage, masks on chosen stages, and the
two-stage system with a cascade head (train step, inference, middle-stage masks)."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from panoptix.data.datasets import PanopticDataset
from panoptix.data.targets import build_targets
from panoptix.losses import total_loss
from panoptix.models.heads.cascade import CascadeMaskRCNN
from panoptix.models.heads.rpn import RPN
from panoptix.structures import PanopticResult

from conftest import image_batch, seeded_model


def tiny() -> dict:
    """A tiny head's keywords (a fresh RPN each call, built first as from a config)."""
    return dict(rpn=RPN(8, anchor_sizes=[8, 16, 32, 64, 128], pre_nms_test=50, post_nms_test=20), box_batch_size=16,
                box_fc_dim=16, mask_conv_dim=8, mask_convs=1)


def _feats(c=8, h=64, w=64):
    torch.manual_seed(0)
    return OrderedDict((f"p{i}", torch.randn(1, c, h // 2 ** i, w // 2 ** i)) for i in range(2, 7))


def _fix_stage(stage, deltas, logits):
    """Make a stage predict constant deltas and class logits whatever its input."""
    with torch.no_grad():
        stage.header.bbox_pred.weight.zero_()
        stage.header.bbox_pred.bias.copy_(torch.tensor(deltas))
        stage.header.cls_score.weight.zero_()
        stage.header.cls_score.bias.copy_(torch.tensor(logits))


def _decode(box, deltas, weights):
    x1, y1, x2, y2 = box
    w, h, cx, cy = x2 - x1, y2 - y1, (x1 + x2) / 2, (y1 + y2) / 2
    dx, dy, dw, dh = (d / wt for d, wt in zip(deltas, weights))
    cx, cy, w, h = cx + dx * w, cy + dy * h, w * math.exp(dw), h * math.exp(dh)
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def test_stages_refine_boxes_in_turn_and_average_probabilities():
    head = CascadeMaskRCNN(8, 2, **tiny(), box_score_thresh=0.0).eval()
    deltas = [(1.0, -2.0, 0.5, 0.0), (2.0, 0.0, 0.0, -1.0), (-3.0, 1.5, 0.3, 0.3)]
    logits = [(0.0, 2.0, 0.0), (0.0, 0.0, 1.0), (1.0, 0.0, 1.0)]
    for stage, d, lg in zip(head.stages, deltas, logits):
        _fix_stage(stage, d, lg)
    proposal = [10.0, 10.0, 30.0, 50.0]
    out = head.detect(_feats(), [torch.tensor([proposal])], [(64, 64)])[0]
    expected_box = proposal
    for d, wts in zip(deltas, [(10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)]):
        expected_box = _decode(expected_box, d, wts)
    probs = torch.stack([torch.softmax(torch.tensor(lg), 0) for lg in logits]).mean(0)
    assert len(out) == 2  # one box, both classes above a zero threshold (class-wise NMS keeps both)
    for label in (0, 1):
        row = out.labels.tolist().index(label)
        assert out.boxes[row].tolist() == pytest.approx(expected_box, abs=1e-4)
        assert out.scores[row].item() == pytest.approx(probs[label + 1].item(), abs=1e-6)
    assert out.masks.shape == (2, 1, 28, 28)


def _train_case():
    torch.manual_seed(0)
    feats = _feats()
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 10:30, 8:40] = 1
    masks[1, 40:60, 30:50] = 1
    target = {"boxes": torch.tensor([[8.0, 10.0, 40.0, 30.0], [30.0, 40.0, 50.0, 60.0]]),
              "labels": torch.tensor([0, 1]), "masks": masks}
    return feats, images, [target]


def test_stage_loss_weights_scale_each_stage():
    feats, images, targets = _train_case()
    out = {}
    for weights in ((1.0, 1.0, 1.0), (1.0, 0.5, 0.25)):
        torch.manual_seed(0)
        head = CascadeMaskRCNN(8, 2, **tiny(), stage_loss_weights=weights).train()
        torch.manual_seed(1)
        out[weights] = {k: v.item() for k, v in head(images, feats, targets)[1].items()}
    a, b = out[(1.0, 1.0, 1.0)], out[(1.0, 0.5, 0.25)]
    assert {f"loss_{n}_s{t}" for n in ("classifier", "box_reg", "mask") for t in range(3)} <= set(a)
    for t, w in enumerate((1.0, 0.5, 0.25)):
        for n in ("classifier", "box_reg", "mask"):
            assert b[f"loss_{n}_s{t}"] == pytest.approx(w * a[f"loss_{n}_s{t}"], rel=1e-5)


def test_next_stage_gets_the_refined_rois_without_the_ground_truth(monkeypatch):
    feats, images, targets = _train_case()
    torch.manual_seed(0)
    head = CascadeMaskRCNN(8, 2, **tiny(), mask_stages=[1]).train()
    _fix_stage(head.stages[0], (1.0, 1.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    seen = []
    original = CascadeMaskRCNN.sample

    def spy(self, stage, proposals, tgts):
        seen.append([p.clone() for p in proposals])
        result = original(self, stage, proposals, tgts)
        seen[-1].append(result)
        return result

    monkeypatch.setattr(CascadeMaskRCNN, "sample", spy)
    losses = head.stage_losses(feats, [torch.tensor([[4.0, 4.0, 24.0, 14.0], [30.0, 38.0, 52.0, 58.0]])],
                               [(64, 64)], targets)
    boxes0, _, _, is_gt0 = seen[0][1]
    # stage 1's proposals: stage 0's sampled non-GT RoIs shifted by (w, h) / 10, clipped to the image
    expected = boxes0[0][~is_gt0[0]].clone()
    wh = (expected[:, 2:] - expected[:, :2]).repeat(1, 2)
    expected = (expected + wh / 10).clamp(0, 64)
    assert torch.allclose(seen[1][0], expected, atol=1e-5)
    assert set(losses) == {"loss_classifier_s0", "loss_box_reg_s0", "loss_classifier_s1", "loss_box_reg_s1",
                           "loss_mask_s1", "loss_classifier_s2", "loss_box_reg_s2"}


def test_bad_stage_settings_are_refused():
    with pytest.raises(ValueError, match="mask_stages"):
        CascadeMaskRCNN(8, 2, mask_stages=[3])
    with pytest.raises(ValueError, match="subset"):
        CascadeMaskRCNN(8, 2, mask_stages=[1], mask_test_stages=[2])
    with pytest.raises(ValueError, match="stage_loss_weights"):
        CascadeMaskRCNN(8, 2, stage_loss_weights=[1.0, 0.5])


@pytest.mark.parametrize("mask_stages", ["[0,1,2]", "[1]"])
def test_two_stage_system_with_a_cascade_head(synth_root, mask_stages):
    ds = PanopticDataset.synthetic(synth_root, "train")
    model = seeded_model(ds.meta, "panoptic_fpn_tiny", "model.instance_head.name=cascade_mask_rcnn",
                         f"model.instance_head.mask_stages={mask_stages}").train()
    samples, images = image_batch(ds)
    losses = model(images, [build_targets(s, ds.meta, "all") for s in samples])
    assert all(torch.isfinite(v) for v in losses.values())
    total_loss(losses).backward()
    stage = model.instance_head.stages[1]
    assert stage.header.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0
    assert (not model.instance_head.stages[0].with_mask) == (mask_stages == "[1]")
    model.eval()
    results = model(images)
    assert len(results) == 2 and all(isinstance(r, PanopticResult) for r in results)
    assert results[0].ids.shape == tuple(images[0].shape[-2:])


def test_lsh_shares_its_trunk_between_regression_and_mask_but_not_classification():
    feats, images, targets = _train_case()
    torch.manual_seed(0)
    head = CascadeMaskRCNN(8, 2, **tiny(), header="lsh", stage_ious=[0.5], stage_loss_weights=[1.0],
                           stage_coder_weights=[[10, 10, 5, 5]], mask_stages=[0]).train()
    header = head.stages[0].header
    trunk_weight = header.trunk[0][0].weight
    losses = head.stage_losses(feats, [torch.tensor([[8.0, 10.0, 38.0, 32.0], [28.0, 38.0, 52.0, 58.0]])],
                               [(64, 64)], targets)
    grads = {}
    for name in ("loss_classifier_s0", "loss_box_reg_s0", "loss_mask_s0"):
        g = torch.autograd.grad(losses[name], [trunk_weight, header.cls_score.weight], allow_unused=True,
                                retain_graph=True)
        grads[name] = [None if x is None else x.abs().sum().item() for x in g]
    assert grads["loss_classifier_s0"][0] is None and grads["loss_classifier_s0"][1] > 0
    assert grads["loss_box_reg_s0"][0] > 0 and grads["loss_box_reg_s0"][1] is None
    assert grads["loss_mask_s0"][0] > 0
    head.eval()
    out = head.detect(feats, [torch.tensor([[8.0, 10.0, 38.0, 32.0]])], [(64, 64)])[0]
    assert out.masks.shape[1:] == (1, 28, 28)
