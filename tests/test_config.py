"""Configs: overrides, unknown keys, typed values, the registries, user components from --import,
and every bundled YAML building its model through the registry."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from panoptix.cli import main
from panoptix.config import ConfigError, load_config, parse_override
from panoptix.data.synthetic import synthetic_meta
from panoptix.engine.build import build_model
from panoptix.registry import (
    BACKBONES,
    DECODE_HEADS,
    EMBEDDING_HEADS,
    FUSIONS,
    NECKS,
    ROI_HEADS,
    SEMANTIC_HEADS,
    SYSTEMS,
    Registry,
    build,
)

from conftest import REPO, tiny_overrides

CONFIGS = sorted((REPO / "panoptix" / "configs").glob("*.yaml"))


def test_override_parsing():
    assert parse_override("solver.base_lr=0.01") == {"solver": {"base_lr": 0.01}}
    assert parse_override("data.min_size_train=[64, 80]") == {"data": {"min_size_train": [64, 80]}}
    assert parse_override("model.backbone.weights=/w/r50.safetensors") == {
        "model": {"backbone": {"weights": "/w/r50.safetensors"}}}
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("solver.base_lr")


def test_unknown_keys_and_files(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) solver.base_lrr for SolverSettings \(did you "
                                          r"mean base_lr\?\); valid keys: amp, amp_dtype, base_lr, "):
        load_config("panoptic_fpn_tiny", ["solver.base_lrr=1"])
    with pytest.raises(ConfigError, match=r"model.semantic_head.deform_convs for FPNSemanticHead; valid keys: "
                                          r"channels, loss_weight$"):
        load_config("panoptic_fpn_tiny", ["model.semantic_head.deform_convs=2"])
    with pytest.raises(ConfigError,
                       match=r"model.name: unknown system 'detr'; registered systems: ciae, semantic, two_stage"):
        load_config(None, ["model.name=detr"])
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) trainer; valid keys: imports, model, data"):
        load_config(None, ["trainer.x=1"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(bad)


def test_values_are_typed_by_the_constructors():
    # PyYAML reads 1e-3 as a string (YAML 1.1 wants a dot); the annotation makes it a float
    assert parse_override("solver.base_lr=1e-3") == {"solver": {"base_lr": "1e-3"}}
    cfg = load_config("panoptic_fpn_tiny", ["solver.base_lr=1e-3", "model.fusion.stuff_min_area=4900"])
    assert cfg["solver"]["base_lr"] == 0.001 and isinstance(cfg["solver"]["base_lr"], float)
    assert cfg["model"]["fusion"]["stuff_min_area"] == 4900
    wrong = {"solver.base_lr=fast": r"^solver.base_lr: expected float, got 'fast' \(",
             "solver.max_iter=1.5": r"^solver.max_iter: expected int, got 1.5 ",
             "model.semantic_head.channels=[64]": r"^model.semantic_head.channels: expected int, got \[64\]",
             "model.fusion.stuff_source=pixels":
                 r"^model.fusion.stuff_source: expected Literal\['argmax', 'stuff_only'\]",
             "solver.amp_dtype=fp8": r"^solver.amp_dtype: expected Literal\['float16', 'bfloat16'\]",
             "model.instance_head.rpn.anchor_sizes=big":
                 r"^model.instance_head.rpn.anchor_sizes: expected Sequence\[int\]"}
    for override, pattern in wrong.items():
        with pytest.raises(ConfigError, match=pattern) as err:
            load_config("panoptic_fpn_tiny", [override])
        assert "\n" not in str(err.value)


def test_defaults_live_in_the_constructors():
    cfg = load_config("panoptic_fpn_tiny", ["solver.max_iter=7"])
    assert cfg["solver"]["max_iter"] == 7
    assert cfg["model"]["backbone"]["arch"] == "resnet18"
    assert cfg["solver"]["momentum"] == 0.9 and cfg["solver"]["warmup_factor"] == 0.001  # paper defaults kept
    r50 = load_config("panoptic_fpn_r50")["solver"]  # the tiny recipe's AdamW does not leak into the papers' configs
    assert (r50["optimizer"], r50["weight_decay"], r50["base_lr"]) == ("sgd", 1e-4, 0.02)
    r50_head = load_config("panoptic_fpn_r50")["model"]["instance_head"]
    assert r50_head["roi_align"] == "sparse" and r50_head["mask_convs"] == 4
    assert cfg["model"]["instance_head"]["rpn"]["nms"] == 0.7 and cfg["model"]["instance_head"]["box_convs"] == 0
    oanet = load_config("oanet_r50")["model"]
    assert oanet["semantic_head"] == {"name": "oanet", "channels": 128, "loss_weight": 0.25}  # OANet Table 1
    assert oanet["fusion"]["stuff_min_area"] == 4900 and oanet["fusion"]["stuff_source"] == "stuff_only"
    assert load_config(None)["model"]["semantic_head"]["loss_weight"] == 0.5  # Panoptic FPN (detectron2)
    # another component name drops the default component's keys instead of refusing them
    assert load_config(None, ["model.semantic_head.name=oanet"])["model"]["semantic_head"]["loss_weight"] == 0.25


def test_config_py_holds_no_per_system_code():
    source = (REPO / "panoptix" / "config.py").read_text()
    names = set(SYSTEMS.names() + BACKBONES.names() + NECKS.names() + ROI_HEADS.names()
                + SEMANTIC_HEADS.names() + FUSIONS.names()) - {"two_stage"}
    code = "\n".join(line for line in source.splitlines() if not line.strip().startswith(("#", '"', "'")))
    assert not [n for n in names if re.search(rf"[\"']{n}[\"']", code)]
    assert len(source.splitlines()) <= 300


def test_registry_refuses_duplicates_and_builds_functions():
    reg = Registry("toy")

    @reg.register("a")
    def fuse(x, y, scale: float = 2.0, mode: str = "sum"):
        return (x + y) * scale

    assert reg.names() == ["a"]
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(lambda: None)
    bound = build(reg, {"name": "a", "scale": "3"})
    assert bound(1, 2) == 9.0
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) x for fuse; valid keys: mode, scale"):
        build(reg, {"name": "a", "x": 1})


_USER_MODULE = '''
"""A user's own semantic head and system, registered without editing panoptix."""
import torch
from torch import nn

from panoptix.models.heads.semantic import SemanticHead
from panoptix.registry import SEMANTIC_HEADS, SYSTEMS
from panoptix.models.systems.two_stage import TwoStagePanoptic

BUILT = []


@SEMANTIC_HEADS.register("p2_linear")
class P2LinearHead(SemanticHead):
    """A 1x1 classifier on P2 alone."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0, loss_weight: float = 1.0):
        super().__init__(num_classes, loss_weight)
        self.drop = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)
        BUILT.append(dropout)

    def features(self, feats):
        return self.drop(feats["p2"])


@SYSTEMS.register("my_two_stage")
class MyTwoStage(TwoStagePanoptic):
    """The two-stage system under another name (a new system is a new file plus a YAML)."""
'''


def test_user_component_from_import_trains(synth_root, tmp_path, monkeypatch):
    (tmp_path / "my_parts.py").write_text(textwrap.dedent(_USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "mine.yaml"
    base = yaml.safe_load((REPO / "panoptix" / "configs" / "panoptic_fpn_tiny.yaml").read_text())
    base["model"]["name"] = "my_two_stage"
    base["model"]["semantic_head"] = {"name": "p2_linear", "dropout": "0.1"}
    config.write_text(yaml.safe_dump(base))
    out = tmp_path / "run"
    args = ["train", "--config", str(config), *tiny_overrides(synth_root, out, solver__max_iter=2)]
    # without the import the names are unknown, and the error says how to add them
    assert main(args) == 2
    assert main([*args[:3], "--import", "my_parts", *args[3:]]) == 0
    my_parts = sys.modules["my_parts"]
    assert my_parts.BUILT[0] == 0.1  # typed by the user's annotation
    stored = json.loads((out / "config.json").read_text())
    assert stored["imports"] == ["my_parts"] and stored["model"]["semantic_head"]["name"] == "p2_linear"
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["iterations"] == 2
    # the imports: key does the same, and predict re-imports from the checkpoint's config
    base["imports"] = ["my_parts"]
    config.write_text(yaml.safe_dump(base))
    model = build_model(load_config(config), synthetic_meta())
    assert type(model).__name__ == "MyTwoStage" and type(model.semantic_head).__name__ == "P2LinearHead"


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_bundled_configs_build_through_the_registry(path):
    meta = synthetic_meta()
    cfg = load_config(path)
    assert cfg["model"]["name"] in SYSTEMS
    # the COCO configs name ImageNet weights through timm: a checkpoint would replace them, and
    # tests never download, so they are built as a predictor builds them
    model = build_model(cfg, meta, weights_from_checkpoint=True)
    if cfg["model"]["name"] == "ciae":
        assert model.detector.num_things == meta.num_things
        assert type(model.embedding) is EMBEDDING_HEADS.get(cfg["model"]["embedding"]["name"])
        assert model.loss.total_iters == cfg["solver"]["max_iter"]
    elif cfg["model"]["name"] == "semantic":
        assert model.num_classes == meta.num_classes
        assert type(model.decoder) is DECODE_HEADS.get(cfg["model"]["decoder"]["name"])
    else:
        assert model.instance_head.num_things == meta.num_things
        assert type(model.semantic_head) is SEMANTIC_HEADS.get(cfg["model"]["semantic_head"]["name"])
    assert Path(path).stem.endswith("_tiny") or cfg["model"]["backbone"]["weights"] == "timm"
