"""The two-stage system end to end on tiny inputs: losses, variable sizes, inference contract, errors,
float32 box geometry under autocast, P6 anchors at stride 64, full-size logits only when asked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from panoptix.data.datasets import PanopticDataset
from panoptix.data.targets import build_targets
from panoptix.structures import PanopticResult

from conftest import image_batch, seeded_model

LOSSES = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask", "loss_seg"}


def _model(meta, *overrides):
    return seeded_model(meta, "panoptic_fpn_tiny", *overrides)


_batch = image_batch


@pytest.mark.parametrize("overrides", [("model.semantic_variant=stuff_things",),
                                       ("model.semantic_variant=all", "model.semantic_head.name=deformable",
                                        "model.neck.deformable_levels=[p3,p4,p5]", "model.instance_head.box_convs=2",
                                        "model.instance_head.head_norm=gn"),
                                       ("model.semantic_variant=all", "model.semantic_head.name=oanet")])
def test_training_losses_and_gradients(synth_root, overrides):
    ds = PanopticDataset.synthetic(synth_root, "train")
    model = _model(ds.meta, *overrides).train()
    variant = overrides[0].split("=")[1]
    samples, images = _batch(ds)
    images[1] = images[1][:, :80, :64].contiguous()  # variable sizes in one batch
    samples[1].ids = samples[1].ids[:80, :64]
    targets = []
    for s in samples:
        s.segments = [g for g in s.segments if (s.ids == g.id).any()]
        targets.append(build_targets(s, ds.meta, variant))
    losses = model(images, targets)
    assert set(losses) == LOSSES
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.semantic_head.classifier.weight.grad.abs().sum() > 0
    assert model.instance_head.roi_heads.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0


def test_seg_loss_weight_is_lambda(synth_root):
    ds = PanopticDataset.synthetic(synth_root, "train")
    samples, images = _batch(ds, 1)
    targets = [build_targets(samples[0], ds.meta, "all")]
    seg = {}
    for lam in (0.25, 1.0):
        model = _model(ds.meta, f"model.semantic_head.loss_weight={lam}").train()
        torch.manual_seed(1)
        seg[lam] = model(images, targets)["loss_seg"].item()
    assert seg[0.25] == pytest.approx(0.25 * seg[1.0], rel=1e-5)


def test_image_without_things_trains(synth_root):
    ds = PanopticDataset.synthetic(synth_root, "train")
    model = _model(ds.meta).train()
    s = ds[0]
    targets = build_targets(s, ds.meta, "all")
    for k in ("boxes", "labels", "masks"):
        targets[k] = targets[k][:0]
    image = torch.from_numpy(np.array(s.image)).permute(2, 0, 1).float() / 255
    losses = model([image], [targets])
    assert all(torch.isfinite(v) for v in losses.values())


def test_inference_contract(synth_root):
    ds = PanopticDataset.synthetic(synth_root, "val")
    model = _model(ds.meta, "model.preprocess.min_size_test=64").eval()
    _, images = _batch(ds)
    images[1] = images[1][:, :70, :50]
    with torch.no_grad():
        results = model(images)
    assert len(results) == 2 and all(isinstance(r, PanopticResult) for r in results)
    assert [tuple(r.ids.shape) for r in results] == [(96, 96), (70, 50)]  # original sizes, not 64 px
    for r in results:
        assert r.ids.dtype == torch.int32 and r.semantic_logits is None  # not kept unless asked for
        for s in r.segments:
            assert int((r.ids == s.id).sum()) == s.area and s.category_id in ds.meta
    model = _model(ds.meta, "model.keep_semantic_logits=true").eval()
    with torch.no_grad():
        kept = model(images[:1])[0]
    assert kept.semantic_logits.shape == (len(model.semantic_categories), 96, 96)


def test_box_geometry_stays_float32_under_autocast(synth_root):
    """Anchors, proposals and detections in float32 while the convolutions run in bfloat16."""
    ds = PanopticDataset.synthetic(synth_root, "val")
    model = _model(ds.meta, "model.instance_head.box_score_thresh=0.0").eval()
    seen = {}
    rpn = model.instance_head.rpn
    real_filter = rpn.filter_proposals

    def filter_proposals(proposals, objectness, image_shapes, num_anchors_per_level):
        seen["proposals"], seen["objectness"] = proposals.dtype, objectness.dtype
        return real_filter(proposals, objectness, image_shapes, num_anchors_per_level)

    rpn.filter_proposals = filter_proposals
    hook = model.neck.register_forward_hook(lambda m, i, o: seen.update(features=o["p2"].dtype))  # returns None
    _, images = _batch(ds, 1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        batch = model.preprocess(images)
        feats = model.neck(model.backbone(batch.tensors))
        anchors = rpn.anchor_generator(batch, list(feats.values()))
        instances, _ = model.instance_head(batch, feats)
    hook.remove()
    assert seen["features"] == torch.bfloat16  # autocast is on
    assert anchors[0].dtype == torch.float32
    assert seen["proposals"] == torch.float32 and seen["objectness"] == torch.float32
    assert len(instances[0]) > 0 and instances[0].boxes.dtype == torch.float32
    assert instances[0].image_size == (96, 96)


def test_p6_anchors_have_stride_64_whatever_the_padding(synth_root):
    ds = PanopticDataset.synthetic(synth_root, "val")
    model = _model(ds.meta, "model.preprocess.size_divisibility=32").eval()
    gen = model.instance_head.rpn.anchor_generator
    for size in (96, 160):  # P6 is 2x2 and 3x3: torchvision would put its anchors at stride 48 and 53
        batch = model.preprocess([torch.rand(3, size, size)])
        feats = model.neck(model.backbone(batch.tensors))
        anchors = gen(batch, list(feats.values()))[0]
        a = gen.num_anchors_per_location()[0]
        p6 = anchors[-feats["p6"].shape[-2] * feats["p6"].shape[-1] * a:]
        centres = ((p6[:, :2] + p6[:, 2:]) / 2).unique()
        assert centres.tolist() == [64.0 * k for k in range(feats["p6"].shape[-1])]


def test_bad_input_is_refused(synth_root):
    ds = PanopticDataset.synthetic(synth_root, "train")
    model = _model(ds.meta).eval()
    with pytest.raises(ValueError, match=r"image 0: dtype torch.int64; images are \(H, W, 3\) arrays"):
        model([torch.zeros(3, 32, 32, dtype=torch.int64)])
    with pytest.raises(ValueError, match=r"channels-last tensor"):
        model([torch.zeros(32, 32, 3)])
    with pytest.raises(ValueError, match="non-empty list"):
        model(torch.zeros(1, 3, 32, 32))
    model.train()
    s = ds[0]
    t = build_targets(s, ds.meta)
    with pytest.raises(ValueError, match="does not match the image size"):
        model([torch.zeros(3, 64, 64)], [t])
    with pytest.raises(ValueError, match="one target dict per image"):
        model([torch.zeros(3, 64, 64)])
