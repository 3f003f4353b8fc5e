"""The two-stage system with the UPSNet and ranking heads: losses and their gradients, raw outputs
shared by every merge, config errors, and ``panoptix ablate`` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from panoptix.config import ConfigError, load_config
from panoptix.data.datasets import PanopticDataset
from panoptix.data.targets import build_targets
from panoptix.engine.ablation import MergeSpec, build_merge, parse_merges
from panoptix.engine.checkpoint import last_checkpoint, safe_torch_load
from panoptix.fusion.ranking import RANK_FIELD

from conftest import image_batch, seeded_model, tiny_overrides


def _model(meta, *overrides):
    return seeded_model(meta, "upsnet_srm_tiny", *overrides)


_batch = image_batch


def test_heads_add_their_losses_and_train_the_mask_and_semantic_heads(heavy_root):
    ds = PanopticDataset.synthetic(heavy_root, "val")
    model = _model(ds.meta).train()
    samples, images = _batch(ds)
    targets = [build_targets(s, ds.meta, "all") for s in samples]
    losses = model(images, targets)
    assert {"loss_panoptic", "loss_srm"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss_panoptic"].backward()   # UPSNet's loss alone reaches the mask and semantic heads
    assert model.instance_head.roi_heads.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0
    assert model.semantic_head.classifier.weight.grad.abs().sum() > 0
    model.zero_grad()
    losses = model(images, targets)
    losses["loss_srm"].backward()        # the ranking loss trains the ranking head only (binary inputs)
    assert sum(p.grad.abs().sum() for p in model.ranking_head.parameters()) > 0
    assert model.instance_head.roi_heads.mask_predictor.mask_fcn_logits.weight.grad is None


def test_every_merge_runs_on_the_same_raw_outputs(heavy_root):
    ds = PanopticDataset.synthetic(heavy_root, "val")
    model = _model(ds.meta, "model.fusion.score_thresh=0.0").eval()
    samples, images = _batch(ds)
    raws = model.predict_raw(images)
    assert len(raws) == 2 and RANK_FIELD in raws[0].instances.extra
    assert raws[0].semantic_logits.shape[-2:] == images[0].shape[-2:]
    assert len(raws[0].instances.extra[RANK_FIELD]) == len(raws[0].instances)
    for spec in parse_merges("heuristic,ranking,upsnet,upsnet+crf"):
        fusion, refine = build_merge(spec, {"name": "heuristic", "score_thresh": 0.0, "stuff_min_area_fraction": 0.01})
        result = model.fuse(raws[0], fusion, refine)
        ids = result.ids.numpy()
        assert ids.shape == tuple(images[0].shape[-2:])
        assert set(np.unique(ids)) - {0} == {s.id for s in result.segments}
        assert "panoptic_logits" not in result.extra   # the full-size logits are not kept
    assert isinstance(model(images), list)


def test_config_errors():
    from panoptix.data.synthetic import synthetic_meta

    with pytest.raises(ValueError, match="semantic_variant: all"):
        _model(synthetic_meta(), "model.semantic_variant=stuff_things", "model.semantic_head.name=fpn")
    with pytest.raises(ConfigError, match="kernel"):
        load_config("upsnet_srm_tiny", ["model.ranking_head.kernel=5x5"])
    with pytest.raises(ConfigError, match="unknown fusion"):
        parse_merges("heuristic,nonsense")
    with pytest.raises(ConfigError, match="crf"):
        parse_merges("upsnet+blur")
    assert parse_merges("upsnet+crf", "densecrf") == [MergeSpec("upsnet", "densecrf")]


@pytest.mark.slow
def test_ablate_command_writes_one_row_per_merge(heavy_root, tmp_path, capsys):
    from panoptix.cli import main

    train = tmp_path / "train"
    assert main(["train", "--config", "upsnet_srm_tiny", *tiny_overrides(heavy_root, train),
                 "data.train.split=val"]) == 0
    capsys.readouterr()
    out = tmp_path / "ablate"
    assert main(["ablate", "--weights", str(last_checkpoint(train)), "--data", str(heavy_root), "--out", str(out),
                 "--limit", "4", "--fusions", "heuristic,ranking,upsnet,upsnet+crf", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "ablation.json").read_text())
    assert [r["merge"] for r in report["rows"]] == ["heuristic", "ranking", "upsnet", "upsnet+crf:torch"]
    assert report["images"] == 4
    for row in report["rows"]:
        assert 0 <= row["pq"] <= 100 and row["merge_ms"] > 0
    assert "| upsnet+crf:torch |" in printed and (out / "ablation.md").is_file()


@pytest.mark.slow
def test_train_variants_trains_one_model_per_merge_with_only_its_head(heavy_root, tmp_path, capsys):
    from panoptix.cli import main

    out = tmp_path / "variants"
    overrides = tiny_overrides(heavy_root, tmp_path / "unused", **{"data.train.split": "val"})
    assert main(["ablate", "--train-variants", "--config", "upsnet_srm_tiny", "--data", str(heavy_root),
                 "--out", str(out), "--limit", "2", "--fusions", "heuristic,ranking", "--device", "cpu",
                 *overrides]) == 0
    report = json.loads((out / "ablation.json").read_text())
    assert [r["merge"] for r in report["rows"]] == ["heuristic", "ranking"]
    assert set(report["training_seconds"]) == {"heuristic", "ranking"}
    heuristic = last_checkpoint(out / "variants" / "heuristic")
    ranking = last_checkpoint(out / "variants" / "ranking")
    assert not any(k.startswith(("ranking_head", "upsnet_head")) for k in safe_torch_load(heuristic)["model"])
    assert any(k.startswith("ranking_head") for k in safe_torch_load(ranking)["model"])
