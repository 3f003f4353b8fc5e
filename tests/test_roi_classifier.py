"""The RoIAlign box classifier CIAE can relabel its detections with: jittered training boxes, the
loss against an independent formulation, and the system's use of it (training loss, relabelling,
the switch that needs it)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from panoptix.data.datasets import PanopticDataset
from panoptix.models.heads.roi_classifier import RoIClassifier, jittered_boxes

from conftest import image_batch, seeded_model

CLASSIFIER = "model.classifier={name: roi_classifier, fc_dim: 32}"


def _feats(b: int = 2, c: int = 8, size: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {f"p{k}": torch.randn(b, c, size // 2 ** k, size // 2 ** k, generator=g) for k in (2, 3, 4, 5)}


def test_jittered_boxes_keep_the_originals_first_and_move_each_coordinate_within_the_bound():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 50.0, 10.0]])   # widths 20, 50; heights 40, 10
    torch.manual_seed(0)
    out = jittered_boxes(boxes, copies=3, jitter=0.1, size=(64, 64))
    assert out.shape == (8, 4) and torch.equal(out[:2], boxes)
    copies = out[2:].reshape(3, 2, 4)                                          # copy-major
    bound = 0.1 * torch.tensor([[20.0, 40.0, 20.0, 40.0], [50.0, 10.0, 50.0, 10.0]])
    assert ((copies[:, 0] - boxes[0]).abs() <= bound[0] + 1e-5).all()        # first box: inside the image
    assert (copies[..., 0] >= 0).all() and (copies[..., 1] >= 0).all()       # second box clipped at 0
    assert (copies[..., 2] <= 64).all() and not torch.equal(copies[0], copies[1])
    assert torch.equal(jittered_boxes(boxes, 0, 0.1, (64, 64)), boxes)
    tiny = jittered_boxes(torch.tensor([[5.0, 5.0, 5.5, 5.5]]), 2, 0.4, (64, 64))
    assert ((tiny[:, 2:] - tiny[:, :2]) >= 0.5).all() and ((tiny[1:, 2:] - tiny[1:, :2]) >= 1.0).all()


def test_loss_is_cross_entropy_over_each_box_and_its_copies_with_copy_major_labels():
    head = RoIClassifier(8, num_things=3, fc_dim=16, copies=2, jitter=0.1)
    feats, sizes = _feats(), [(64, 64), (64, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0], [30.0, 30.0, 60.0, 50.0]]),
                "labels": torch.tensor([2, 0])},
               {"boxes": torch.tensor([[10.0, 8.0, 20.0, 30.0]]), "labels": torch.tensor([1])}]
    torch.manual_seed(3)
    loss = head.losses(feats, targets, sizes)["loss_roi_cls"]
    torch.manual_seed(3)
    boxes = [jittered_boxes(t["boxes"], 2, 0.1, s) for t, s in zip(targets, sizes)]
    expected = F.cross_entropy(head(feats, boxes, sizes), torch.tensor([2, 0, 2, 0, 2, 0, 1, 1, 1]))
    assert torch.allclose(loss, expected)
    # With a zero last layer every class has logit 0: the loss is ln K.
    torch.nn.init.zeros_(head.logits.weight)
    torch.nn.init.zeros_(head.logits.bias)
    assert torch.allclose(head.losses(feats, targets, sizes)["loss_roi_cls"], torch.log(torch.tensor(3.0)))


def test_a_batch_without_things_gives_a_zero_loss_that_reaches_every_parameter():
    head = RoIClassifier(8, num_things=3, fc_dim=16)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    loss = head.losses(_feats(), [empty, empty], [(64, 64), (64, 64)])["loss_roi_cls"]
    loss.backward()
    assert float(loss.detach()) == 0.0 and all(p.grad is not None for p in head.parameters())


def test_training_pools_with_the_matmul_kernel_and_inference_with_torchvisions_alike():
    head = RoIClassifier(8, num_things=3, fc_dim=16, roi_align="matmul")
    boxes, sizes = [torch.tensor([[3.0, 5.0, 40.0, 33.0], [10.0, 2.0, 60.0, 60.0]])], [(64, 64)]
    feats = _feats(b=1)
    assert type(head.pool_train).__name__ == "MatmulMultiScaleRoIAlign"
    assert type(head.pool_export).__name__ == "MultiScaleRoIAlign"
    assert torch.allclose(head.train()(feats, boxes, sizes), head.eval()(feats, boxes, sizes), atol=1e-5)


def test_the_training_only_mask_head_gives_mask_rcnns_loss_on_the_ground_truth_boxes():
    head = RoIClassifier(8, num_things=3, fc_dim=16, copies=2, mask_loss_weight=2.0, mask_convs=1, mask_conv_dim=8)
    masks = torch.zeros(2, 64, 64)
    masks[0, 4:40, 4:36], masks[1, 30:50, 30:60] = 1.0, 1.0
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 36.0, 40.0], [30.0, 30.0, 60.0, 50.0]]),
                "labels": torch.tensor([2, 0]), "masks": masks}]
    feats, sizes = _feats(b=1), [(64, 64)]
    logits_layer = head.mask_predictor.mask_fcn_logits
    torch.nn.init.zeros_(logits_layer.weight)
    torch.nn.init.zeros_(logits_layer.bias)
    losses = head.losses(feats, targets, sizes)
    assert torch.allclose(losses["loss_roi_mask"], 2.0 * torch.log(torch.tensor(2.0)))   # logits 0: BCE ln 2
    # Constant logits per class channel: each ground-truth box is scored on its own class's channel
    # (box 0 is class 2, box 1 class 0) against its mask resampled to 28x28; class 1 is not scored.
    with torch.no_grad():
        logits_layer.bias.copy_(torch.tensor([1.0, -7.0, 0.5]))
    from torchvision.models.detection.roi_heads import project_masks_on_boxes
    grids = project_masks_on_boxes(masks, targets[0]["boxes"], torch.arange(2), 28)
    assert grids.mean() > 0.95                                                # the masks fill their boxes
    logits = torch.stack([torch.full((28, 28), 0.5), torch.full((28, 28), 1.0)])
    expected = 2.0 * F.binary_cross_entropy_with_logits(logits, grids)
    assert torch.allclose(head.losses(feats, targets, sizes)["loss_roi_mask"], expected)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 64, 64)}
    zero = head.losses(feats, [empty], sizes)
    assert set(zero) == {"loss_roi_cls", "loss_roi_mask"} and float(zero["loss_roi_mask"].detach()) == 0.0
    plain = RoIClassifier(8, num_things=3, fc_dim=16)
    assert plain.mask_head is None and set(plain.losses(feats, targets, sizes)) == {"loss_roi_cls"}


def test_ciae_trains_the_classifier_and_takes_instance_classes_from_it(synth_root):
    ds = PanopticDataset.synthetic(synth_root, "val")
    with pytest.raises(ValueError, match="go together"):
        seeded_model(ds.meta, "ciae_tiny", "model.instance_category=classifier")
    with pytest.raises(ValueError, match="go together"):
        seeded_model(ds.meta, "ciae_tiny", CLASSIFIER)
    model = seeded_model(ds.meta, "ciae_tiny", CLASSIFIER, "model.instance_category=classifier",
                         "model.detector.score_thresh=0.0")
    samples, images = image_batch(ds)
    build = model.target_builder()
    losses = model.train()(images, [build(s) for s in samples])
    assert torch.isfinite(losses["loss_roi_cls"]) and losses["loss_roi_cls"] > 0
    losses["loss_roi_cls"].backward()
    assert model.backbone.parameters().__next__().grad.abs().sum() > 0        # it trains the shared features
    # A classifier whose last layer always says thing class 2 relabels every detection.
    torch.nn.init.zeros_(model.classifier.logits.weight)
    with torch.no_grad():
        model.classifier.logits.bias.copy_(torch.tensor([0.0, 0.0, 5.0] + [0.0] * (ds.meta.num_things - 3)))
    raw = model.eval().predict_raw(images[:1])[0]
    assert len(raw.instances) > 0 and (raw.instances.labels == 2).all()
    result = model.fuse(raw)
    things = [s for s in result.segments if s.isthing]
    assert things and {s.category_id for s in things} == {ds.meta.thing_ids[2]}
    assert (result.instances.labels == 2).all()
