"""Configs: overrides, unknown keys, and every bundled YAML builds its model."""

from __future__ import annotations

from pathlib import Path

import pytest

from panoptix.config import ConfigError, build_model, load_config, parse_override
from panoptix.data.synthetic import synthetic_meta

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_override_parsing():
    assert parse_override("solver.base_lr=0.01") == {"solver": {"base_lr": 0.01}}
    assert parse_override("data.min_size_train=[64, 80]") == {"data": {"min_size_train": [64, 80]}}
    assert parse_override("model.backbone.weights=/w/r50.safetensors") == {
        "model": {"backbone": {"weights": "/w/r50.safetensors"}}}
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("solver.base_lr")


def test_unknown_keys_and_files(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'solver.base_lrr'.*base_lr"):
        load_config("panoptic_fpn_tiny", ["solver.base_lrr=1"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="model.system"):
        build_model(load_config(None, ["model.system=detr"]), synthetic_meta())


def test_file_then_overrides():
    cfg = load_config("panoptic_fpn_tiny", ["solver.max_iter=7"])
    assert cfg["solver"]["max_iter"] == 7
    assert cfg["model"]["backbone"]["name"] == "resnet18"
    assert cfg["solver"]["momentum"] == 0.9 and cfg["solver"]["weight_decay"] == 1e-4  # paper defaults kept
    assert load_config("oanet_r50")["model"]["semantic"]["loss_weight"] == 0.25  # OANet Table 1
    assert load_config(None)["model"]["semantic"]["loss_weight"] == 0.25


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_bundled_configs_build(path):
    meta = synthetic_meta()
    model = build_model(load_config(path), meta)
    assert model.instance_head.num_things == meta.num_things
