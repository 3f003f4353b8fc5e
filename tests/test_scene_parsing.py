"""AinnoSeg's scene parser: DANet's attention modules, OCR's region representations, the system's
losses and results, and training + evaluation through the CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from panoptix.data.synthetic import synthetic_meta
from panoptix.models.heads.danet import ChannelAttention, DANetHead, PositionAttention
from panoptix.models.heads.ocr import OCRHead, object_region_representations

from conftest import seeded_model, tiny_overrides


def test_position_attention_is_the_unscaled_softmax_formula():
    torch.manual_seed(0)
    pam = PositionAttention(4, 2)
    with torch.no_grad():
        pam.gamma.fill_(0.5)
    x = torch.randn(2, 4, 3, 5)
    q, k, v = (conv(x).flatten(2) for conv in (pam.query, pam.key, pam.value))  # (B, C', N)
    attention = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # (B, N, N): row i over j, no 1/sqrt(d)
    expected = 0.5 * (v @ attention.transpose(1, 2)).view(2, 4, 3, 5) + x
    torch.testing.assert_close(pam(x), expected, rtol=1e-5, atol=1e-5)


def test_channel_attention_is_the_max_minus_softmax_formula():
    cam = ChannelAttention()
    with torch.no_grad():
        cam.gamma.fill_(2.0)
    x = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2): X = I, so E = I
    # softmax over each row of max(E) - E = [[0, 1], [1, 0]]: rows [1, e] / (1 + e) and [e, 1] / (1 + e)
    e = torch.e
    attention = torch.tensor([[1, e], [e, 1]]) / (1 + e)
    expected = 2.0 * attention.view(1, 2, 1, 2) + x  # A X with X = I is A
    torch.testing.assert_close(cam(x), expected)


def test_danet_starts_as_the_identity_on_both_branches():
    torch.manual_seed(0)
    head = DANetHead(6, 3, channels=8, key_channels=2).eval()
    x = torch.randn(2, 6, 5, 4)
    assert head.pam.gamma.item() == 0.0 and head.cam.gamma.item() == 0.0
    reduced = head.reduce_pam(x)
    torch.testing.assert_close(head.pam(reduced), reduced)
    out = head(x)
    assert set(out) == {"feature", "logits", "pam_logits", "cam_logits"}
    assert out["feature"].shape == (2, 8, 5, 4) and out["logits"].shape == (2, 3, 5, 4)


def test_object_region_representation_is_the_pixel_softmax_weighted_mean():
    features = torch.arange(12.0).view(1, 2, 2, 3)  # C=2, 6 pixels
    logits = torch.full((1, 2, 2, 3), -1e4)
    logits[0, 0, 0, 1] = 0.0  # region 0: all its weight on pixel (0, 1)
    logits[0, 1] = 0.0  # region 1: uniform over the 6 pixels
    f = object_region_representations(features, logits)
    assert f.shape == (1, 2, 2, 1)
    torch.testing.assert_close(f[0, :, 0, 0], torch.tensor([1.0, 7.0]))
    torch.testing.assert_close(f[0, :, 1, 0], features[0].flatten(1).mean(1))


def test_ocr_head_outputs_and_weights():
    head = OCRHead(6, 3, channels=8, key_channels=4, aux_loss_weight=0.3).eval()
    out = head(torch.randn(2, 6, 5, 4))
    assert out["logits"].shape == out["aux_logits"].shape == (2, 3, 5, 4) and out["feature"].shape == (2, 8, 5, 4)
    assert head.loss_weights == {"logits": 1.0, "aux_logits": 0.3}


def test_scene_parser_losses_are_weighted_and_results_are_semantic_maps():
    meta = synthetic_meta()
    model = seeded_model(meta, "ainnoseg_tiny", "model.context.loss_weight=0.0")
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    targets = [{"semantic": torch.randint(0, meta.num_classes, im.shape[-2:])} for im in images]
    targets[0]["semantic"][:10] = 255
    losses = model(images, targets)
    assert set(losses) == {"loss_context", "loss_context_pam", "loss_context_cam", "loss_decoder", "loss_decoder_aux"}
    assert losses["loss_context"].item() == 0.0  # weight 0
    assert model.context.loss_weights == {"logits": 0.0, "pam_logits": 0.1, "cam_logits": 0.1}
    assert model.decoder.loss_weights == {"logits": 1.0, "aux_logits": 0.3}
    # the other weights as configured, exactly: the same model (same weights, same dropout draws)
    # with every weight 1 gives the unweighted cross-entropies
    torch.manual_seed(1)
    weighted = model(images, targets)
    unit = seeded_model(meta, "ainnoseg_tiny", "model.context.loss_weight=1.0", "model.context.aux_loss_weight=1.0",
                        "model.decoder.aux_loss_weight=1.0")
    torch.manual_seed(1)
    plain = unit(images, targets)
    expected = {"loss_context_pam": 0.1, "loss_context_cam": 0.1, "loss_decoder": 1.0, "loss_decoder_aux": 0.3}
    for key, w in expected.items():
        assert plain[key].item() > 0.5
        assert weighted[key].item() == pytest.approx(w * plain[key].item(), rel=1e-6), key
    with pytest.raises(ValueError, match="does not match the image size"):
        model(images, targets[::-1])
    model.eval()
    results = model(images)
    for im, r in zip(images, results):
        sem = r.extra["semantic"]
        assert sem.shape == im.shape[-2:] and r.ids.shape == im.shape[-2:]
        assert torch.equal(r.ids.long(), sem + 1)
        assert sorted(s.id for s in r.segments) == (torch.unique(sem) + 1).tolist()
        assert sum(s.area for s in r.segments) == sem.numel()


@pytest.mark.slow
def test_train_and_evaluate_a_scene_parser(synth_root, tmp_path, capsys):
    from panoptix.cli import main

    out = tmp_path / "run"
    overrides = tiny_overrides(synth_root, out, engine__eval_period=2, engine__eval_images=4,
                               data__mosaic=0.5, solver__lr_schedule="poly")
    assert main(["train", "--config", "ainnoseg_tiny", *overrides]) == 0
    text = capsys.readouterr().out
    assert "mIoU" in text and "ADE score" in text
    summary = json.loads((out / "train_summary.json").read_text())
    final = summary["final_eval"]
    assert 0.0 <= final["mIoU"] <= 1.0 and final["ade_score"] == pytest.approx((final["mIoU"] +
                                                                                 final["pixel_accuracy"]) / 2)
    assert set(final["per_class_iou"]) == {c.name for c in synthetic_meta().categories}
    assert [h["iteration"] for h in summary["history"]][:2] == [2, 4] and "mIoU" in summary["history"][0]
    # predictions of a scene parser come with label PNGs (category ids), with and without TTA
    for extra in ([], ["--tta", "scales=0.75,1 flip"]):
        pred = tmp_path / f"pred{len(extra)}"
        assert main(["predict", "--weights", summary["checkpoint"], "--input", str(synth_root / "val"),
                     "--output", str(pred), "--no-overlays", *extra]) == 0
        labels = sorted((pred / "labels").glob("*.png"))
        assert len(labels) == 24 and (pred / "labels" / "categories.json").is_file()
        values = set(np.unique(np.asarray(Image.open(labels[0]))).tolist())
        assert values and values <= {c.id for c in synthetic_meta().categories}


def test_scene_parser_trains_under_autocast():
    meta = synthetic_meta()
    model = seeded_model(meta, "ainnoseg_tiny")
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [{"semantic": torch.randint(0, meta.num_classes, (64, 64))} for _ in images]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
