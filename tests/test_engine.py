"""Engine: schedule, checkpoints (atomic, safe), exact resume, NaN guard, DDP, predict -> evaluate."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist

from panoptix.cli import main
from panoptix.engine import distributed
from panoptix.engine.checkpoint import (
    CheckpointError,
    atomic_save,
    capture_rng,
    last_checkpoint,
    restore_rng,
    safe_torch_load,
    seed_all_rng,
)
from panoptix.engine.trainer import TrainingDiverged, lr_factor

from conftest import REPO, free_port, tiny_overrides, tiny_trainer


def test_lr_schedule():
    f = lambda it: lr_factor(it, warmup_iters=100, warmup_factor=0.001, steps=(300, 400), gamma=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.001)
    assert f(50) == pytest.approx(0.001 * 0.5 + 0.5)
    assert f(100) == f(299) == 1.0
    assert f(300) == pytest.approx(0.1) and f(400) == pytest.approx(0.01)


def test_poly_lr_schedule():
    f = lambda it: lr_factor(it, warmup_iters=10, warmup_factor=0.1, steps=(), gamma=0.1,  # noqa: E731
                             schedule="poly", max_iter=1000, poly_power=0.9)
    assert f(500) == pytest.approx(0.5 ** 0.9)
    assert f(1000) == 0.0
    assert f(5) == pytest.approx((1 - 5 / 1000) ** 0.9 * (0.1 * 0.5 + 0.5))  # warm-up times the decay


def test_atomic_save_and_rng_roundtrip(tmp_path):
    import random

    import numpy as np

    path = atomic_save({"a": torch.arange(3), "rng": capture_rng()}, tmp_path / "c.pth")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]  # no temporary file left behind
    expected = (torch.rand(2).tolist(), random.random(), float(np.random.rand()))
    torch.rand(5), random.random(), np.random.rand()  # move every generator on
    restore_rng(safe_torch_load(path)["rng"])
    assert (torch.rand(2).tolist(), random.random(), float(np.random.rand())) == expected


def test_seed_all_rng_seeds_every_generator_a_checkpoint_saves():
    import random

    import numpy as np

    seed_all_rng(5)
    first = (torch.rand(2).tolist(), random.random(), float(np.random.rand()))
    seed_all_rng(5)
    assert (torch.rand(2).tolist(), random.random(), float(np.random.rand())) == first


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch EVIL_MARKER",))


def test_crafted_pickle_checkpoint_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "model_final.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Evil()}, evil)  # a torch zip file with a payload
    with pytest.raises(CheckpointError, match="refused"):
        safe_torch_load(evil)
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps(_Evil()))  # a bare pickle
    with pytest.raises(CheckpointError, match="refused"):
        safe_torch_load(raw)
    assert main(["predict", "--weights", str(evil), "--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "refused" in capsys.readouterr().err
    assert not (tmp_path / "EVIL_MARKER").exists()


@pytest.mark.slow
def test_resume_is_exact(synth_root, tmp_path, capsys):
    common = dict(solver__max_iter=200, solver__steps="[150]", solver__warmup_iters=20, data__num_workers=1,
                  data__min_size_train="[48, 64]", engine__checkpoint_period=0, engine__log_period=50)
    straight = tiny_trainer(synth_root, tmp_path / "straight", **common)
    straight.train()
    first = tiny_trainer(synth_root, tmp_path / "split", **{**common, "solver__max_iter": 100})
    first.train()
    assert last_checkpoint(tmp_path / "split").name == "model_0000100.pth"
    second = tiny_trainer(synth_root, tmp_path / "split", **common)  # a fresh process would build exactly this
    capsys.readouterr()
    summary = second.train()
    # the longer schedule is said, and nothing else (the folders differ, but not what trains)
    notes = capsys.readouterr().err
    assert ("settings changed since model_0000100.pth: solver.max_iter: 100 -> 200; "
            "solver.schedule_iters: 100 -> 200; the run goes on" in notes) and notes.count(" -> ") == 2
    assert summary["started_at"] == 100 and summary["iterations"] == 200
    a, b = straight.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys()
    changed = [k for k in a if not torch.equal(a[k], b[k])]
    assert changed == []
    init = tiny_trainer(synth_root, tmp_path / "init", **common).model.state_dict()
    assert any(not torch.equal(a[k], init[k]) for k in a)  # training did move the weights


def test_nan_guard_keeps_last_good_checkpoint(synth_root, tmp_path):
    trainer = tiny_trainer(synth_root, tmp_path, solver__max_iter=6, engine__checkpoint_period=2)
    real_forward = trainer.ddp.forward
    calls = {"n": 0}

    def forward(images, targets=None):
        calls["n"] += 1
        losses = real_forward(images, targets)
        if calls["n"] == 4:
            losses["loss_mask"] = losses["loss_mask"] * float("nan")
        return losses

    trainer.ddp.forward = forward
    with pytest.raises(TrainingDiverged, match=r"not finite at iteration 4 .*loss_mask=nan.*model_0000002\.pth"):
        trainer.train()
    assert last_checkpoint(tmp_path).name == "model_0000002.pth"
    assert not (tmp_path / "model_0000004.pth").exists()


def test_train_outputs(trained_tiny):
    assert (trained_tiny / "curves.png").stat().st_size > 1000
    rows = (trained_tiny / "train_log.csv").read_text().splitlines()
    assert rows[0].startswith("iteration,loss_objectness") and len(rows) == 5
    assert any(p.name.startswith("events.out.tfevents") for p in (trained_tiny / "tb").iterdir())
    summary = json.loads((trained_tiny / "train_summary.json").read_text())
    assert summary["iterations"] == 4 and summary["final_eval"]["All"]["n"] > 0
    ckpt = safe_torch_load(last_checkpoint(trained_tiny))
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "iteration", "meta", "config"} <= set(ckpt)


def test_predict_then_evaluate(trained_tiny, synth_val, tmp_path):
    out = tmp_path / "pred"
    weights = last_checkpoint(trained_tiny)
    assert main(["predict", "--weights", str(weights), "--input", str(synth_val["image_dir"]), "--output", str(out),
                 "--gt-json", str(synth_val["gt_json"]), "--batch-size", "5"]) == 0
    data = json.loads((out / "panoptic_pred.json").read_text())
    assert len(data["annotations"]) == 24 and len(list((out / "overlays").glob("*.png"))) == 24
    assert len(list((out / "panoptic_pred").glob("*.png"))) == 24
    assert main(["evaluate", "--gt-json", str(synth_val["gt_json"]),
                 "--pred-json", str(out / "panoptic_pred.json")]) == 0
    results = json.loads((out / "pq_results.json").read_text())
    assert results["num_images"] == 24
    # the same numbers as the in-memory evaluator used during training
    summary = json.loads((trained_tiny / "train_summary.json").read_text())
    assert results["All"]["pq"] == pytest.approx(summary["final_eval"]["All"]["pq"], abs=1e-9)


def test_predict_single_image_without_gt(trained_tiny, synth_val, tmp_path):
    image = sorted(synth_val["image_dir"].iterdir())[0]
    assert main(["predict", "--weights", str(last_checkpoint(trained_tiny)), "--input", str(image), "--output",
                 str(tmp_path)]) == 0
    ann = json.loads((tmp_path / "panoptic_pred.json").read_text())["annotations"]
    assert [a["image_id"] for a in ann] == [int(image.stem)]


def test_predict_skips_bad_files_and_writes_the_rest(trained_tiny, synth_val, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    good = sorted(synth_val["image_dir"].iterdir())[:3]
    for f in good:
        shutil.copy(f, images / f.name)
    (images / "000000.jpg").write_bytes(b"\xff\xd8 not really a jpeg")     # undecodable
    (images / "notes.txt").write_text("not an image")
    args = ["predict", "--weights", str(last_checkpoint(trained_tiny)), "--input", str(images), "--no-overlays"]
    assert main([*args, "--output", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 2 and "000000.jpg: skipped, cannot be decoded" in err
    assert "notes.txt: skipped, not an image file" in err
    summary = json.loads((tmp_path / "o" / "predict_summary.json").read_text())
    assert summary["images"] == 3
    assert sorted(Path(s["file"]).name for s in summary["skipped"]) == ["000000.jpg", "notes.txt"]
    ann = json.loads((tmp_path / "o" / "panoptic_pred.json").read_text())["annotations"]
    assert sorted(a["image_id"] for a in ann) == sorted(int(f.stem) for f in good)
    # --strict: the same files are written, and the exit code says something was skipped
    assert main([*args, "--output", str(tmp_path / "s"), "--strict"]) == 2
    assert "2 file(s)" in capsys.readouterr().err
    assert len(json.loads((tmp_path / "s" / "panoptic_pred.json").read_text())["annotations"]) == 3


def _torchrun(synth_root, out, config: str = "panoptic_fpn_tiny", **extra) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "panoptix.cli", "train", "--config", config,
           *tiny_overrides(synth_root, out, solver__batch_size=4, engine__checkpoint_period=3, **extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_close_drops_the_ddp_wrapper_before_leaving_the_group(synth_root, tmp_path, monkeypatch):
    """``Trainer.close`` frees the DDP wrapper before ``destroy_process_group``: its reducer must not
    hold the group's last reference (whose release, with the GIL held, could hang at exit)."""
    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        trainer = tiny_trainer(synth_root, tmp_path / "out")
        trainer.ddp = torch.nn.parallel.DistributedDataParallel(trainer.model)
        wrapper, reducer = weakref.ref(trainer.ddp), weakref.ref(trainer.ddp.reducer)
        alive_at_cleanup = []
        real_cleanup = distributed.cleanup

        def cleanup(barrier: bool = True) -> None:
            alive_at_cleanup.append((wrapper() is not None, reducer() is not None))
            real_cleanup(barrier)

        monkeypatch.setattr(distributed, "cleanup", cleanup)
        trainer.close()
        assert alive_at_cleanup == [(False, False)]
        assert trainer.ddp is trainer.model and not tdist.is_initialized()
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ciae_memory_embeddings_stay_identical_on_every_rank(synth_root, tmp_path):
    """CIAE's memory is updated from the categories of every rank's images (all-reduced), so the
    ranks end with the same memory (``replicas_in_sync`` checks buffers too), moved from M_0."""
    _torchrun(synth_root, tmp_path / "ciae", config="ciae_tiny", solver__max_iter=3)
    summary = json.loads((tmp_path / "ciae" / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["replicas_in_sync"] is True
    state = safe_torch_load(tmp_path / "ciae" / "model_0000003.pth")["model"]
    assert int(state["loss.step"]) == 3


@pytest.mark.slow
def test_ddp_two_processes_gloo_and_exact_resume(synth_root, tmp_path):
    """2 gloo ranks: replicas stay in sync, and a run stopped at 3 and resumed to 6 ends with the very
    weights of a straight run (every rank gets back its own RNG state: RoI sampling draws on it)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    _torchrun(synth_root, straight, solver__max_iter=6)
    summary = json.loads((straight / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["replicas_in_sync"] is True
    assert summary["iterations"] == 6
    assert last_checkpoint(straight) == Path(straight / "model_0000006.pth")
    assert (straight / "model_0000003.pth").is_file()
    rng = safe_torch_load(straight / "model_0000003.pth")["rng"]
    assert isinstance(rng, list) and len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])
    _torchrun(synth_root, split, solver__max_iter=3)
    _torchrun(synth_root, split, solver__max_iter=6)
    assert json.loads((split / "train_summary.json").read_text())["started_at"] == 3
    a = safe_torch_load(straight / "model_0000006.pth")["model"]
    b = safe_torch_load(split / "model_0000006.pth")["model"]
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.slow
def test_train_ranks_runs_gloo_processes_on_this_machine(synth_root, tmp_path, capsys):
    """``panoptix train --ranks 2`` launches two CPU ranks itself (torchrun --standalone), the batch split
    between them; a bad count is refused in one line."""
    out = tmp_path / "ranks"
    args = ["train", "--config", "panoptic_fpn_tiny", *tiny_overrides(synth_root, out, solver__batch_size=4,
                                                                      solver__max_iter=2)]
    assert main([*args, "--ranks", "2"]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["replicas_in_sync"] is True and summary["iterations"] == 2
    assert main([*args, "--ranks", "0"]) == 2
    assert "--ranks 0: at least 1" in capsys.readouterr().err
