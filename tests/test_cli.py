import argparse
import json
import subprocess
import sys

import pytest

from panoptix.cli import main
from panoptix.engine.precision import cpu_has_native_bfloat16

from conftest import REPO


def test_synth_evaluate_viz(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["synth", "--out", str(data), "--train", "2", "--val", "4", "--size", "64", "--workers", "1"]) == 0
    ann = data / "annotations"
    assert main(["perturb", "--gt-json", str(ann / "panoptic_val.json"), "--out-json", str(tmp_path / "p.json"),
                 "--out-dir", str(tmp_path / "p")]) == 0
    assert main(["evaluate", "--gt-json", str(ann / "panoptic_val.json"), "--pred-json", str(tmp_path / "p.json"),
                 "--workers", "2", "--out", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "Things" in out and "4 images" in out
    res = json.loads((tmp_path / "r.json").read_text())
    assert 0 < res["All"]["pq"] < 1 and set(res) >= {"All", "Things", "Stuff", "per_class"}
    assert main(["viz", "--gt-json", str(ann / "panoptic_val.json"), "--images", str(data / "val"),
                 "--pred-json", str(tmp_path / "p.json"), "--pred-dir", str(tmp_path / "p"),
                 "--out", str(tmp_path / "viz"), "--labels"]) == 0
    assert len(list((tmp_path / "viz").glob("*.png"))) == 4


def test_evaluate_reports_bad_input_without_traceback(tmp_path, capsys):
    (tmp_path / "gt.json").write_text("{")
    assert main(["evaluate", "--gt-json", str(tmp_path / "gt.json"), "--pred-json", str(tmp_path / "gt.json")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "malformed JSON" in err and "Traceback" not in err


_HEAVY = ("torch", "torchvision", "timm", "matplotlib", "tensorboard", "panoptix.engine", "panoptix.models")
_RUN_AND_LIST_MODULES = """
import sys
from panoptix.cli import main
rc = main(sys.argv[1:])
print("RC", rc, "HEAVY", [m for m in {heavy!r} if m in sys.modules])
"""


def _run_cli(*args):
    out = subprocess.run([sys.executable, "-c", _RUN_AND_LIST_MODULES.format(heavy=_HEAVY), *map(str, args)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_light_commands_start_without_torch(tmp_path):
    data = tmp_path / "data"
    ann = data / "annotations"
    commands = [
        ["synth", "--out", data, "--train", 1, "--val", 3, "--size", 64, "--workers", 1],
        ["perturb", "--gt-json", ann / "panoptic_val.json", "--out-json", tmp_path / "p.json", "--out-dir",
         tmp_path / "p"],
        ["evaluate", "--gt-json", ann / "panoptic_val.json", "--pred-json", tmp_path / "p.json", "--workers", 2],
        ["viz", "--gt-json", ann / "panoptic_val.json", "--out", tmp_path / "viz"],
    ]
    for cmd in commands:
        assert _run_cli(*cmd) == "RC 0 HEAVY []", cmd[0]


def test_help_does_not_import_torch():
    out = subprocess.run([sys.executable, "-c", "import sys\nfrom panoptix.cli import build_parser\n"
                          "build_parser().format_help()\nprint('torch' in sys.modules)"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.stdout.strip() == "False"
    # ``panoptix --help`` itself: every command listed, torch never imported
    script = ("import sys\nfrom panoptix.cli import main\ntry:\n    main(['--help'])\n"
              "except SystemExit as e:\n    print('EXIT', e.code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "EXIT 0 False"
    assert all(f"    {name}" in out.stdout for name in ("synth", "pseudo-label", "fit-fusion", "export", "demo"))


def test_every_option_of_every_command_has_a_help_text():
    from panoptix.cli import COMMANDS, command_module

    missing = []
    for name in COMMANDS:
        parser = argparse.ArgumentParser()
        command_module(name).add_arguments(parser)
        parser.format_help()  # a stray % in a help text fails here
        missing += [f"{name} {a.option_strings or a.dest}" for a in parser._actions
                    if a.dest != "help" and not (a.help or "").strip()]
    assert not missing
    assert len(COMMANDS) == 14
    from panoptix.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    sweep = " ".join(commands.choices["sweep"].format_help().split())   # the description is not %-formatted
    assert "with a 95% interval" in sweep and "%%" not in sweep


def test_namespace_gives_a_commands_defaults_and_refuses_unknown_names():
    from panoptix.cli import predict
    from panoptix.cli.options import namespace

    args = namespace(predict, input="in", output="out", weights="w.pth")
    assert (args.batch_size, args.device, args.overrides, args.imports, args.tta) == (4, "auto", [], [], None)
    with pytest.raises(TypeError, match="unknown \\['inputs'\\], missing \\['output'\\]"):
        namespace(predict, inputs="in", input="in")


@pytest.fixture()
def id0_prediction(tmp_path):
    """The synthetic val set with its first prediction's first segment renamed to id 0."""
    import numpy as np

    from panoptix.data.png import read_id_png, write_id_png

    data = tmp_path / "data"
    assert main(["synth", "--out", str(data), "--train", "1", "--val", "3", "--size", "64", "--workers", "1"]) == 0
    gt_json = data / "annotations" / "panoptic_val.json"
    assert main(["perturb", "--gt-json", str(gt_json), "--out-json", str(tmp_path / "p.json"),
                 "--out-dir", str(tmp_path / "p")]) == 0
    pred = json.loads((tmp_path / "p.json").read_text())
    first = pred["annotations"][0]
    png = tmp_path / "p" / first["file_name"]
    ids = read_id_png(png)
    old = first["segments_info"][0]["id"]
    write_id_png(png, np.where(ids == old, 0, np.where(ids == 0, old, ids)))   # swap the segment and VOID
    first["segments_info"][0]["id"] = 0
    if (ids == 0).any():
        first["segments_info"].append({"id": old, "category_id": first["segments_info"][0]["category_id"]})
    (tmp_path / "p.json").write_text(json.dumps(pred))
    return gt_json, tmp_path / "p.json"


def test_evaluate_warns_about_an_id_0_segment_and_strict_refuses_it(id0_prediction, tmp_path, capsys):
    gt_json, pred_json = id0_prediction
    assert main(["evaluate", "--gt-json", str(gt_json), "--pred-json", str(pred_json)]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "p.json: image 1" in warnings[0] and "segment id 0" in warnings[0]
    assert "1 warning(s)" in captured.out
    assert json.loads((tmp_path / "pq_results.json").read_text())["num_warnings"] == 1
    assert main(["evaluate", "--gt-json", str(gt_json), "--pred-json", str(pred_json), "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "segment id 0" in err and "Traceback" not in err


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reports_its_phases(tmp_path, capsys):
    """`panoptix demo` with a 2-iteration schedule: data -> train -> predict -> PQ -> overlays, a
    table and the wall time of each phase, in the terminal and in demo_summary.json."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--train", "6", "--val", "4", "--size", "64", "--overlays", "2",
                 "solver.max_iter=2", "solver.batch_size=2", "solver.warmup_iters=1", "data.min_size_train=[64]",
                 "data.num_workers=0", "engine.eval_period=0", "engine.checkpoint_period=0"]) == 0
    text = capsys.readouterr().out
    summary = json.loads((out / "demo_summary.json").read_text())
    assert list(summary["seconds"]) == ["data", "training", "prediction", "evaluation", "overlays"]
    assert all(v >= 0 for v in summary["seconds"].values())
    pq = json.loads((out / "pq_results.json").read_text())
    assert summary["pq"]["All"] == pq["All"] and "wall time (s): data" in text
    assert len(list((out / "overlays").glob("*.png"))) == 2
    # --precision auto: bfloat16 autocast exactly where the CPU computes it natively
    trained = json.loads((out / "train" / "config.json").read_text())
    assert summary["cpu_bfloat16"] == trained["solver"]["cpu_amp"] == cpu_has_native_bfloat16()
    # the training skips its own final evaluation: the demo's prediction step scores the same split
    assert json.loads((out / "train" / "train_summary.json").read_text())["final_eval"] is None


@pytest.mark.parametrize("precision,cpu_amp", [("float32", False), ("bfloat16", True)])
def test_demo_precision_sets_cpu_amp_before_the_users_overrides(tmp_path, monkeypatch, precision, cpu_amp):
    from panoptix.cli import train

    seen = {}
    monkeypatch.setattr(train, "run", lambda args: seen.update(vars(args)) or 7)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["demo", "--out", str(tmp_path), "--train", "2", "--val", "2", "--size", "64",
                 "--precision", precision, "engine.seed=3"]) == 7  # the training's exit code ends the demo
    assert seen["overrides"][-3:] == [f"solver.cpu_amp={str(cpu_amp).lower()}", "engine.final_eval=false",
                                      "engine.seed=3"]
    assert seen["ranks"] == 2  # on a CPU-only machine
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert main(["demo", "--out", str(tmp_path), "--precision", precision]) == 7
    assert seen["ranks"] == 1  # where a GPU is visible: one process, on the GPU
