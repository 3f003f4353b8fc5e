"""Config inheritance, discoverable configs, name suggestions, schedules, dataset layouts, the run
folder and id matching in evaluate: the pieces of the newcomer's path, each on its own."""

from __future__ import annotations

import json

import pytest

from panoptix.cli import main
from panoptix.config import load_config
from panoptix.data.spec import DatasetSpec
from panoptix.engine.checkpoint import CheckpointError, resolve_weights
from panoptix.registry import ConfigError

from conftest import tiny_overrides


def test_base_configs_merge_key_by_key_and_the_child_wins(tmp_path):
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "short.yaml").write_text("solver: {max_iter: 40, base_lr: 0.5}\n")
    (tmp_path / "mine.yaml").write_text(
        "_base_: [panoptic_fpn_tiny, parts/short.yaml]\n"          # a bundled name, then a path relative to this file
        "model: {semantic_head: {loss_weight: 0.25}}\n"
        "data: {train: {format: coco, json: t.json}}\n"
        "solver: {base_lr: 0.1}\n")
    cfg = load_config(tmp_path / "mine.yaml")
    assert cfg["solver"]["max_iter"] == 40 and cfg["solver"]["base_lr"] == 0.1       # later base, then the child
    assert cfg["model"]["semantic_head"] == {"name": "fpn", "channels": 64, "loss_weight": 0.25}   # merged
    assert cfg["model"]["neck"]["out_channels"] == 64                                   # the tiny base's
    assert cfg["data"]["train"]["format"] == "coco" and cfg["data"]["train"]["root"] is None  # format change
    assert cfg["data"]["val"]["format"] == "synthetic"                                  # untouched section
    assert "_base_" not in cfg


def test_delete_marker_cycles_and_override_order(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: panoptic_fpn_tiny\nmodel: {semantic_head: {_delete_: true, name: "
                                     "oanet}}\n")
    assert load_config(tmp_path / "a.yaml")["model"]["semantic_head"]["channels"] == 128   # oanet's default, not 64
    (tmp_path / "b.yaml").write_text("_base_: c.yaml\n")
    (tmp_path / "c.yaml").write_text("_base_: b.yaml\n")
    with pytest.raises(ConfigError, match="_base_ cycle"):
        load_config(tmp_path / "b.yaml")
    one = load_config("panoptic_fpn_tiny", ["data.train.root=X", "data.train.format=coco", "data.train.split=s"])
    two = load_config("panoptic_fpn_tiny", ["data.train.format=coco", "data.train.split=s", "data.train.root=X"])
    assert one["data"]["train"] == two["data"]["train"] == {**one["data"]["train"], "root": "X", "format": "coco"}


def test_names_get_the_closest_match_and_fail_before_any_data_is_read(tmp_path, capsys):
    suggestions = {"solver.max_itr=5": "did you mean max_iter?", "model.semantic_head.name=fpnn": "did you mean fpn?",
                   "model.backbone.arch=resnet19": "did you mean resnet18?"}
    for override, hint in suggestions.items():
        with pytest.raises(ConfigError, match=hint.replace("?", r"\?")):
            load_config("panoptic_fpn_tiny", [override])
    with pytest.raises(ConfigError, match=r"did you mean panoptic_fpn_tiny\?"):
        load_config("panoptic_fpn_tinny")
    # an unknown architecture stops train in one line, before the (missing) data is looked at
    code = main(["train", "--config", "panoptic_fpn_tiny", "model.backbone.arch=resnet19",
                 f"data.train.root={tmp_path / 'none'}", f"engine.output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "resnet18" in err[0] and "none" not in err[0]
    # so does a setting a constructor refuses (built once on the meta device, before the data)
    code = main(["train", "--config", "panoptic_fpn_tiny", "model.instance_head.rpn.anchor_sizes=[8,16]",
                 f"data.train.root={tmp_path / 'none'}", f"engine.output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["panoptix train: error: model.instance_head: rpn.anchor_sizes needs one size per "
                                 "level P2..P6 (5), got 2"]


def test_config_list_and_show(capsys):
    assert main(["config", "list"]) == 0
    out = capsys.readouterr().out
    assert "panoptic_fpn_tiny" in out and "RoI heads" in out and "cascade_mask_rcnn" in out
    assert main(["config", "show", "panoptic_fpn_tiny", "solver.max_iter=77"]) == 0
    shown = capsys.readouterr().out
    import yaml

    cfg = yaml.safe_load(shown)
    assert cfg["solver"]["max_iter"] == 77 and cfg["model"]["instance_head"]["rpn"]["nms"] == 0.7   # every default


def test_schedule_scaling_and_its_note():
    from panoptix.engine.settings import SolverSettings

    r50 = load_config("panoptic_fpn_r50")["solver"]
    scaled = load_config("panoptic_fpn_r50", ["solver.max_iter=9000", "solver.scale_schedule=true"])["solver"]
    factor = 9000 / r50["max_iter"]
    assert scaled["steps"] == [round(s * factor) for s in r50["steps"]]
    assert scaled["warmup_iters"] == round(r50["warmup_iters"] * factor)
    again = load_config("panoptic_fpn_r50", [f"solver.{k}={json.dumps(v)}" for k, v in scaled.items()])["solver"]
    assert again["steps"] == scaled["steps"]                                  # a stored config is not scaled twice
    assert SolverSettings(**scaled).schedule_note() is None
    note = SolverSettings(**load_config("panoptic_fpn_r50", ["solver.max_iter=9000"])["solver"]).schedule_note()
    assert "below solver.steps" in note and "scale_schedule" in note and "\n" not in note


def test_a_dataset_from_root_and_split_and_what_is_missing(synth_root, tmp_path):
    assert len(DatasetSpec(format="coco", root=str(synth_root), split="val").open(load_images=False)) > 0
    with pytest.raises(Exception, match=r"data.val: no file .*panoptic_val2017.json \(COCO layout of root .*; "
                                        r"set data.val.json$"):
        DatasetSpec(format="coco", root=str(synth_root), split="val2017").open(where="data.val")
    with pytest.raises(Exception, match=r"needs a split \(data.train.split"):
        DatasetSpec(format="coco", root=str(synth_root)).open(where="data.train")


def test_run_folder_log_final_weights_and_timing_columns(synth_root, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--config", "panoptic_fpn_tiny", *tiny_overrides(synth_root, out)]) == 0
    log = (out / "log.txt").read_text()
    assert "\r" not in log and "trained 4 iterations" in log and "train: 100%" in log
    header = (out / "train_log.csv").read_text().splitlines()[0].split(",")
    assert {"time", "data_time", "eta_seconds", "max_mem_mb"} <= set(header)
    assert resolve_weights(out) == out / "model_final.pth"
    with pytest.raises(CheckpointError, match="no model_final.pth"):
        resolve_weights(tmp_path)


def _prediction_with_ids(synth_val, tmp_path, new_ids):
    gt = json.loads(synth_val["gt_json"].read_text())
    pred = {**gt, "annotations": [{**a, "image_id": new_ids(a)} for a in gt["annotations"]]}
    path = tmp_path / "pred.json"
    path.write_text(json.dumps(pred))
    return path


def test_evaluate_matches_other_ids_by_file_name_or_names_both_sides(synth_val, tmp_path, capsys):
    by_stem = _prediction_with_ids(synth_val, tmp_path, lambda a: a["file_name"].removesuffix(".png"))
    args = ["evaluate", "--gt-json", str(synth_val["gt_json"]), "--pred-json", str(by_stem),
            "--pred-dir", str(synth_val["gt_dir"])]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "matched by file_name" in captured.err and captured.err.count("warning") == 1
    assert json.loads((tmp_path / "pq_results.json").read_text())["All"]["pq"] == 1.0
    wrong = _prediction_with_ids(synth_val, tmp_path, lambda a: f"x{a['image_id']}")
    for ann in json.loads(wrong.read_text())["annotations"]:
        assert ann["image_id"].startswith("x")
    data = json.loads(wrong.read_text())
    data["annotations"] = [{**a, "file_name": "other_" + a["file_name"]} for a in data["annotations"]]
    wrong.write_text(json.dumps(data))
    assert main(["evaluate", "--gt-json", str(synth_val["gt_json"]), "--pred-json", str(wrong),
                 "--pred-dir", str(synth_val["gt_dir"])]) == 2
    err = capsys.readouterr().err
    assert "the prediction has ids" in err and "'x" in err and "--gt-json" in err
