"""Resume never silently restarts: a missing or corrupt last checkpoint falls back to the newest
readable one (said in one line), none readable stops; logs keep rows up to the checkpoint resumed
from, with neither gap nor duplicate."""

from __future__ import annotations

import csv

import pytest

from panoptix.cli import main
from panoptix.engine.checkpoint import LAST, CheckpointError, find_resume_checkpoint, last_checkpoint

from conftest import tiny_overrides, tiny_trainer


def _iterations(path):
    """The iterations of a CSV log's complete rows (a row being written may be cut short)."""
    with open(path, newline="") as f:
        return [int(r["iteration"]) for r in csv.DictReader(f) if None not in r.values()]


def _killed_run(synth_root, out):
    """A run killed after logging iteration 6, its last checkpoint at 4 (as after ``kill -9``)."""
    tiny_trainer(synth_root, out, val=True, solver__max_iter=6, engine__checkpoint_period=4, engine__eval_period=2,
                 engine__eval_images=2).train()
    (out / "model_0000006.pth").unlink()
    (out / LAST).write_text("model_0000004.pth")
    assert _iterations(out / "train_log.csv") == [1, 2, 3, 4, 5, 6]
    assert _iterations(out / "eval_log.csv") == [2, 4, 6]


def test_logs_after_a_kill_keep_rows_to_the_checkpoint_and_no_duplicates(synth_root, tmp_path):
    out = tmp_path / "run"
    _killed_run(synth_root, out)
    summary = tiny_trainer(synth_root, out, val=True, solver__max_iter=8, engine__checkpoint_period=4,
                           engine__eval_period=2, engine__eval_images=2).train()
    assert summary["started_at"] == 4
    assert _iterations(out / "train_log.csv") == list(range(1, 9))
    assert _iterations(out / "eval_log.csv") == [2, 4, 6, 8]


def test_a_deleted_last_checkpoint_resumes_from_the_newest_readable_one(synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    tiny_trainer(synth_root, out, val=True, solver__max_iter=6, engine__checkpoint_period=2).train()
    (out / "model_0000006.pth").unlink()                                   # named by last_checkpoint
    (out / "model_0000004.pth").write_bytes((out / "model_0000004.pth").read_bytes()[:5000])  # truncated
    capsys.readouterr()
    summary = tiny_trainer(synth_root, out, val=True, solver__max_iter=6, engine__checkpoint_period=2).train()
    assert summary["started_at"] == 2 and summary["iterations"] == 6
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("resume:")]
    assert len(lines) == 1 and "model_0000006.pth (missing)" in lines[0] and "from model_0000002.pth" in lines[0]
    assert last_checkpoint(out).name == "model_0000006.pth"


def test_no_readable_checkpoint_stops_and_names_the_files(synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    tiny_trainer(synth_root, out, val=True, solver__max_iter=4, engine__checkpoint_period=2).train()
    for p in out.glob("model_*.pth"):
        p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"model_0000004\.pth .*model_0000002\.pth"):
        find_resume_checkpoint(out)
    before = {p.name: p.read_bytes() for p in out.glob("model_*.pth")}
    capsys.readouterr()  # the first run's own lines (its schedule note)
    assert main(["train", "--config", "panoptic_fpn_tiny", *tiny_overrides(synth_root, out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint to resume from" in err[0] and "model_0000004.pth" in err[0]
    assert {p.name: p.read_bytes() for p in out.glob("model_*.pth")} == before     # nothing overwritten


def test_a_fresh_folder_starts_at_zero(tmp_path):
    assert find_resume_checkpoint(tmp_path) == (None, None, "")


def test_a_corrupt_weights_file_gets_one_line(trained_tiny, synth_val, tmp_path, capsys):
    bad = tmp_path / "cut.pth"
    bad.write_bytes(last_checkpoint(trained_tiny).read_bytes()[:20000])
    image = sorted(synth_val["image_dir"].iterdir())[0]
    assert main(["predict", "--weights", str(bad), "--input", str(image), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "truncated or corrupt" in err[0]


@pytest.mark.slow
def test_kill_9_then_resume_keeps_every_log_row_once(synth_root, tmp_path):
    """A real ``kill -9`` between checkpoints, then the same command again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    out = tmp_path / "run"
    args = [sys.executable, "-m", "panoptix.cli", "train", "--config", "panoptic_fpn_tiny",
            *tiny_overrides(synth_root, out, engine__checkpoint_period=3, engine__tensorboard="false")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([*args, "solver.max_iter=100000"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:   # killed once a checkpoint exists and rows were logged after it
        rows = _iterations(out / "train_log.csv") if (out / "train_log.csv").is_file() else []
        if last_checkpoint(out) is not None and rows and rows[-1] % 3 == 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _iterations(out / "train_log.csv")[-1]
    assert killed_at >= 5
    target = killed_at + 4
    subprocess.run([*args, f"solver.max_iter={target}"], env=env, check=True, capture_output=True, timeout=300)
    assert _iterations(out / "train_log.csv") == list(range(1, target + 1))


def test_resume_false_into_a_run_folder_refuses_and_keeps_its_weights(synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    tiny_trainer(synth_root, out, solver__max_iter=2, engine__checkpoint_period=1).train()
    before = {p.name: p.read_bytes() for p in out.glob("model_*.pth")}
    config_before = (out / "config.json").read_text()
    capsys.readouterr()
    assert main(["train", "--config", "panoptic_fpn_tiny",
                 *tiny_overrides(synth_root, out, engine__resume="false", model__fusion__score_thresh=0.3)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model_final.pth" in err[0] and "engine.resume=true" in err[0]
    assert {p.name: p.read_bytes() for p in out.glob("model_*.pth")} == before
    assert (out / "config.json").read_text() == config_before     # the run's own config is kept too


def test_logs_of_a_run_stopped_before_its_first_checkpoint_are_replaced_saying_so(synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    tiny_trainer(synth_root, out, solver__max_iter=3).train()
    for p in [*out.glob("model_*.pth"), out / LAST]:              # as if killed before any checkpoint
        p.unlink()
    capsys.readouterr()
    summary = tiny_trainer(synth_root, out, solver__max_iter=2).train()
    notes = [ln for ln in capsys.readouterr().err.splitlines() if "no checkpoint to resume from" in ln]
    assert summary["started_at"] == 0
    assert len(notes) == 1 and "3 rows of train_log.csv" in notes[0] and "starts at iteration 0" in notes[0]
    assert _iterations(out / "train_log.csv") == [1, 2]
