"""``panoptix sweep``: 2 variants x 2 seeds at 2 iterations, the table and JSON checked; a re-run
skips finished runs; the statistics against hand-computed values."""

from __future__ import annotations

import json
import math

import pytest

from panoptix.cli import main
from panoptix.engine.config_changes import config_changes
from panoptix.engine.sweep import (
    Run,
    Variant,
    check_references,
    markdown,
    paired_effect,
    summarise,
    t_quantile,
    train_command,
)
from panoptix.errors import PanoptixError

from conftest import tiny_overrides


def test_variants_parse_and_the_interval_is_students_t():
    assert Variant.parse("base") == Variant("base", [])
    v = Variant.parse("crf=model.refine={name: crf, backend: torch},data.min_size_train=[64,80]")
    assert v.overrides == ["model.refine={name: crf, backend: torch}", "data.min_size_train=[64,80]"]
    with pytest.raises(PanoptixError, match="not key=value"):
        Variant.parse("x=solver.max_iter")
    assert Variant.parse_tta("ms_flip=scales=0.5,1 flip") == Variant("ms_flip", [], "scales=0.5,1 flip", kind="eval")
    with pytest.raises(PanoptixError, match="NAME=SETTINGS"):
        Variant.parse_tta("flip")
    with pytest.raises(PanoptixError, match="unknown item 'flop'"):
        Variant.parse_tta("f=flop")
    # differences 1, 2, 3: mean 2, sd 1, t(2) = 4.303 -> half width 4.303 / sqrt(3)
    effect = paired_effect([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    assert effect["mean"] == 2.0 and effect["n"] == 3
    assert effect["high"] - effect["mean"] == pytest.approx(4.303 / math.sqrt(3))
    assert t_quantile(1) == 12.706 and t_quantile(1000) == 1.96


def test_a_variant_names_a_per_seed_input_with_seed(tmp_path):
    student = Variant.parse("student=data.pseudo.root=runs/pseudo/seed_{seed},solver.max_iter=5")
    command = train_command("ainnoseg_tiny", Run(student, 3, tmp_path / "student" / "seed_3"), ["x.y=seed_{seed}"], [])
    assert command[-5:] == ["x.y=seed_3", "data.pseudo.root=runs/pseudo/seed_3", "solver.max_iter=5",
                            "engine.seed=3", f"engine.output_dir={tmp_path / 'student' / 'seed_3'}"]


def test_variants_of_other_configs_ensembles_and_two_level_fusions_are_checked(tmp_path):
    htc = Variant.parse("lwl=@lwl_htc_tiny,model.loss_weighting=null")
    assert (htc.config, htc.overrides, htc.kind) == ("lwl_htc_tiny", ["model.loss_weighting=null"], "train")
    command = train_command("eups_tiny", Run(htc, 1, tmp_path / "lwl" / "seed_1"), [], [])
    assert command[command.index("--config") + 1] == "lwl_htc_tiny"
    with pytest.raises(PanoptixError, match="--eval-variant at: '@x' is not key=value"):
        Variant.parse("at=@x", kind="eval")   # an evaluation variant reloads the base's runs: no config of its own
    ens = Variant.parse_ensemble("ens=r18:0.4,eups:1.2,se")
    assert ens.kind == "ensemble" and ens.members == [("r18", 0.4), ("eups", 1.2), ("se", 1.0)]
    fused = Variant.parse_two_level("fused=ens,lwl")
    trained = [Variant.parse("r18"), Variant.parse("eups"), Variant.parse("se"), htc]
    check_references(trained, [ens, fused], fit_data="runs/synth")
    with pytest.raises(PanoptixError, match="pass --fit-data"):
        check_references(trained, [ens, fused], fit_data=None)
    with pytest.raises(PanoptixError, match="'nope' is not a --variant"):
        check_references(trained, [Variant.parse_ensemble("e=r18,nope:2")], "x")
    with pytest.raises(PanoptixError, match="'fused' is neither a --variant nor an --eval-ensemble"):
        check_references(trained, [ens, fused, Variant.parse_two_level("f2=fused,r18")], "x")
    with pytest.raises(PanoptixError, match="name two ends"):
        Variant.parse_two_level("f=r18")
    with pytest.raises(PanoptixError, match="weight of 'r18' must be positive"):
        Variant.parse_ensemble("e=r18:-1")
    with pytest.raises(PanoptixError, match="must all differ"):
        check_references(trained, [Variant.parse_ensemble("r18=eups,se")], None)


def test_one_seed_prints_means_without_nan_spreads():
    scores = {("a", 0): {"PQ": 50.0}, ("b", 0): {"PQ": 52.5}}
    table = markdown(summarise([Variant("a"), Variant("b")], [0], scores), ["PQ"])
    assert "| a | 50.0 | — |" in table and "| b | 52.5 | +2.5 |" in table
    assert "nan" not in table and "one seed: no spread or interval" in table
    two = {**scores, ("a", 1): {"PQ": 51.0}, ("b", 1): {"PQ": 54.5}}
    assert "| b | 53.5 ± 1.4 | +3.0 [-3.4, +9.4] |" in markdown(summarise([Variant("a"), Variant("b")], [0, 1], two))


def test_best_of_baseline_compares_each_seed_with_its_better_variant():
    """AntVisionPS's "better end": per seed, the higher PQ of the named variants; all keys from it."""
    scores = {("a", 0): {"PQ": 68.0, "PQ_st": 85.0}, ("b", 0): {"PQ": 67.0, "PQ_st": 90.0},
              ("a", 1): {"PQ": 68.0, "PQ_st": 85.0}, ("b", 1): {"PQ": 68.5, "PQ_st": 89.0},
              ("f", 0): {"PQ": 69.5, "PQ_st": 89.0}, ("f", 1): {"PQ": 70.5, "PQ_st": 88.0}}
    report = summarise([Variant("a"), Variant("b"), Variant("f")], [0, 1], scores, "best:a,b")
    assert report["base_per_seed"] == {"0": "a", "1": "b"}
    fused = next(r for r in report["rows"] if r["variant"] == "f")
    assert fused["PQ"]["effect"]["mean"] == pytest.approx(1.75)        # (69.5 - 68) and (70.5 - 68.5)
    assert fused["PQ_st"]["effect"]["mean"] == pytest.approx(1.5)      # (89 - 85) and (88 - 89)
    assert next(r for r in report["rows"] if r["variant"] == "a")["PQ"]["effect"]["mean"] == pytest.approx(-0.25)
    table = markdown(report, ["PQ"])
    assert "ΔPQ vs best:a,b" in table and "best:a,b per seed: seed 0 a, seed 1 b" in table
    with pytest.raises(PanoptixError, match="best: needs variant names"):
        summarise([Variant("a")], [0], {("a", 0): {"PQ": 1.0}}, "best:")


def test_side_by_side_jobs_split_the_cpus_this_process_may_use(monkeypatch):
    from panoptix.engine import distributed

    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: {3}, raising=False)
    monkeypatch.setattr(distributed.os, "cpu_count", lambda: 16)
    assert distributed.thread_share_env(1)["OMP_NUM_THREADS"] == "1"  # taskset -c 3: one CPU, not 16
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert distributed.thread_share_env(2)["OMP_NUM_THREADS"] == "4"
    assert distributed.thread_share_env(16)["MKL_NUM_THREADS"] == "1"


@pytest.mark.slow
def test_two_variants_two_seeds_table_json_and_resume(synth_root, tmp_path, capsys):
    out = tmp_path / "sweep"
    overrides = [o for o in tiny_overrides(synth_root, tmp_path / "unused", solver__max_iter=2)
                 if not o.startswith("engine.output_dir")]
    args = ["sweep", "--config", "panoptic_fpn_tiny", "--variant", "base", "--variant",
            "lambda1=model.semantic_head.loss_weight=1.0", "--eval-variant", "all_scores=model.fusion.score_thresh=0.0",
            "--eval-tta", "flip=flip", "--eval-ensemble", "solo=base:1", "--eval-ensemble", "ens=base:0.4,lambda1:1.2",
            "--eval-two-level", "fused=ens,lambda1", "--fit-data", str(synth_root), "--fit-split", "train",
            "--seeds", "0,1", "--jobs", "2", "--out", str(out), *overrides]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| variant | PQ | PQ_th | PQ_st |" in printed and "| lambda1 |" in printed
    report = json.loads((out / "sweep.json").read_text())
    assert [r["variant"] for r in report["rows"]] == ["base", "lambda1", "all_scores", "flip", "solo", "ens", "fused"]
    assert report["seeds"] == [0, 1] and report["tta"] == {"flip": "flip"}
    base, other, evaluated, flipped, solo, ens, fused = report["rows"]
    # an ensemble of one run at weight 1 is that run (test_ensemble), so the seeds' runs were paired right
    assert solo["PQ"]["values"] == pytest.approx(base["PQ"]["values"], abs=1e-9)
    assert report["ensembles"]["ens"] == [["base", 0.4], ["lambda1", 1.2]] and ens["PQ"]["effect"]["n"] == 2
    for seed in (0, 1):
        record = json.loads((out / "fused" / f"seed_{seed}" / "two_level.json").read_text())
        assert record["ends"] == [f"{out}/base/seed_{seed}:0.4,{out}/lambda1/seed_{seed}:1.2",
                                  str(out / "lambda1" / f"seed_{seed}")]
        assert record["fit"]["images"] == 6 and record["fit"]["fusion"] == "heuristic"
    assert fused["PQ"]["effect"]["n"] == 2 and report["two_level"]["fused"]["ends"] == ["ens", "lambda1"]
    assert flipped["PQ"]["effect"]["n"] == 2 and not (out / "flip").exists()
    assert not (out / "all_scores").exists() and evaluated["PQ"]["effect"]["n"] == 2   # the base's runs, reloaded
    cached = json.loads((out / "base" / "seed_0" / "sweep_eval.json").read_text())
    assert any(k.endswith(" model.fusion.score_thresh=0.0") for k in cached) and len(cached) == 3
    assert any(k.endswith(" tta=flip") for k in cached)
    assert "effect" not in base["PQ"] and other["PQ"]["effect"]["n"] == 2
    diffs = [a - b for a, b in zip(other["PQ"]["values"], base["PQ"]["values"])]
    assert other["PQ"]["effect"]["mean"] == pytest.approx(sum(diffs) / 2)
    assert report["test_images"] == 24 and (out / "sweep.md").read_text().startswith("| variant |")
    for variant in ("base", "lambda1"):
        for seed in (0, 1):
            run = out / variant / f"seed_{seed}"
            cfg = json.loads((run / "config.json").read_text())
            assert cfg["engine"]["seed"] == seed and (run / "model_final.pth").is_file()
            assert cfg["model"]["semantic_head"]["loss_weight"] == (1.0 if variant == "lambda1" else 0.5)
    assert main([*args, "--baseline", "lambda1"]) == 0     # a re-run trains nothing; differences to lambda1
    assert "4 finished, 0 to train" in capsys.readouterr().out
    again = json.loads((out / "sweep.json").read_text())
    assert again["base"] == "lambda1" and "effect" not in again["rows"][1]["PQ"]
    assert again["rows"][0]["PQ"]["effect"]["mean"] == pytest.approx(-other["PQ"]["effect"]["mean"])
    assert main([*args, "--baseline", "nope"]) == 2
    assert "--baseline 'nope': 'nope' is no --variant or --eval-* name" in capsys.readouterr().err
    assert main([*args, "--baseline", "best:base,nope"]) == 2
    assert "'nope' is no --variant" in capsys.readouterr().err
    assert main([*args, "--baseline", "best:base,lambda1"]) == 0          # each seed against its better run
    best = json.loads((out / "sweep.json").read_text())
    assert set(best["base_per_seed"].values()) <= {"base", "lambda1"}
    assert all(best["rows"][i]["PQ"]["effect"]["mean"] <= 0 for i in (0, 1))
    # a variant changed since its runs were trained: refused, not reported under its new settings
    changed = [a.replace("loss_weight=1.0", "loss_weight=2.0") for a in args]
    assert main(changed) == 2
    assert ("run lambda1 seed 0" in (err := capsys.readouterr().err)
            and "model.semantic_head.loss_weight: 1.0 -> 2.0" in err)
    accepted = ["sweep", "--accept-config-change", "model.semantic_head.loss_weight", *changed[1:]]
    assert main([*accepted, "data.num_workers=1"]) == 0
    assert "4 finished, 0 to train" in capsys.readouterr().out   # the loader's workers leave weights alone


def test_config_changes_compare_training_settings_only():
    saved = {"model": {"backbone": {"arch": "resnet18", "stem_width": 24}, "sizes": (1, 2)},
             "engine": {"output_dir": "a", "seed": 0}, "data": {"num_workers": 1, "val": {"root": "x"}}}
    planned = {"model": {"backbone": {"arch": "resnet18"}, "sizes": [1, 2]},
               "engine": {"output_dir": "b", "seed": 0}, "data": {"num_workers": 0, "val": {"root": "y"}}}
    assert config_changes(saved, planned) == ['model.backbone.stem_width: 24 -> "(absent)"']
    assert config_changes(saved, planned, accepted=["model.backbone.stem_width"]) == []
    planned["engine"]["seed"] = 1
    assert config_changes(saved, planned, accepted=["model.backbone"]) == ["engine.seed: 0 -> 1"]
