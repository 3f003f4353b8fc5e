"""Pseudo-labels, label folders, label PNG evaluation, mixed student batches and self-training rounds."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from panoptix.data import PanopticFormatError
from panoptix.data.formats import load_ade20k
from panoptix.data.labels import category_map, pseudo_label, write_categories, write_label_png
from panoptix.data.synthetic import synthetic_meta
from panoptix.engine.sampler import MixedStream
from panoptix.evaluation.semantic import evaluate_label_folders

from conftest import tiny_overrides

META = synthetic_meta()
CATS = list(META.category_ids)  # 1..6, 11..14


def test_pseudo_labels_ignore_exactly_the_pixels_below_the_threshold():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(len(CATS), 9, 11) * 2, dim=0)
    probs[:, 0, 0] = 0.0
    probs[3, 0, 0] = 0.5  # exactly at the threshold: kept
    probs[4, 0, 0] = 0.5
    for t in (0.3, 0.5, 0.7):
        labels = pseudo_label(probs, CATS, t)
        confidence, index = probs.max(0)
        low = (confidence < t).numpy()
        assert ((labels == 0) == low).all()
        assert (labels[~low] == np.asarray(CATS)[index.numpy()][~low]).all()
    assert pseudo_label(probs, CATS, 0.5)[0, 0] == CATS[3]
    with pytest.raises(ValueError, match="threshold"):
        pseudo_label(probs, CATS, 1.5)


def test_label_folder_round_trip_through_the_ade20k_reader(tmp_path):
    sem = np.array([[0, 6, 9], [255, 1, 1]])
    labels = category_map(sem, CATS)
    assert labels.tolist() == [[1, 11, 14], [0, 2, 2]]
    write_label_png(tmp_path / "annotations/pseudo/a.png", labels)
    (tmp_path / "images/pseudo").mkdir(parents=True)
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "images/pseudo/a.png")
    write_categories(tmp_path, META)
    meta, records = load_ade20k(tmp_path, "pseudo")
    assert meta.to_json() == META.to_json() and [r.image_id for r in records] == ["a"]
    write_label_png(tmp_path / "wide.png", np.array([[300, 0]]))  # 16-bit when an id exceeds 255
    assert np.asarray(Image.open(tmp_path / "wide.png")).tolist() == [[300, 0]]


def test_label_folder_evaluation_by_hand(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    write_label_png(gt / "x.png", np.array([[1, 1, 2, 2, 0]]))
    write_label_png(pred / "x.png", np.array([[1, 2, 2, 0, 3]]))
    r = evaluate_label_folders(gt, pred)
    # 4 labelled pixels: class 1 -> (1, 2), class 2 -> (2, unlabelled); the last gt pixel is ignored
    assert r["num_classes"] == 3 and r["pixel_accuracy"] == pytest.approx(2 / 4)
    # IoU 1 = 1 / (2 + 1 - 1); IoU 2 = 1 / (2 + 2 - 1); class 3 never occurs (ignored pixel) -> left out
    assert r["per_class_iou"]["1"] == pytest.approx(1 / 2) and r["per_class_iou"]["2"] == pytest.approx(1 / 3)
    assert r["mIoU"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert r["ade_score"] == pytest.approx((r["mIoU"] + 0.5) / 2)
    (pred / "x.png").unlink()
    with pytest.raises(PanopticFormatError, match="no prediction for 1"):
        evaluate_label_folders(gt, pred)


class _Stream:
    def __init__(self, name, n):
        self.name, self.n, self.dataset = name, n, None

    def __len__(self):
        return self.n

    def __getitem__(self, g):
        return self.name, g


def test_an_unreadable_teacher_fails_before_any_image_is_labelled(tmp_path):
    from panoptix.engine.pseudo_label import write_pseudo_labels

    class NeverCalled:
        def probabilities(self, image):
            raise AssertionError("an image was labelled before the teacher's record could be written")

    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    with pytest.raises(IsADirectoryError):   # a run folder where its checkpoint was meant
        write_pseudo_labels(NeverCalled(), META, [image], tmp_path / "out", teacher=tmp_path, progress=False)
    assert not (tmp_path / "out").exists()


def test_mixed_stream_takes_the_labelled_ratio_of_every_batch():
    mixed = MixedStream(_Stream("L", 10), _Stream("P", 10), ratio=0.5, batch_size=4)
    assert [mixed[g] for g in range(8)] == [("L", 0), ("L", 1), ("P", 0), ("P", 1),
                                            ("L", 2), ("L", 3), ("P", 2), ("P", 3)]
    quarter = MixedStream(_Stream("L", 10), _Stream("P", 10), ratio=0.25, batch_size=4)
    assert [quarter[g][0] for g in range(8)] == ["L", "P", "P", "P"] * 2
    assert quarter[7] == ("P", 5)
    with pytest.raises(ValueError, match="labelled_ratio"):
        MixedStream(_Stream("L", 1), _Stream("P", 1), ratio=2.0, batch_size=4)


@pytest.mark.slow
def test_pseudo_label_then_self_train_end_to_end(synth_root, tmp_path, capsys):
    from panoptix.cli import main

    common = [o for o in tiny_overrides(synth_root, tmp_path / "unused") if not o.startswith("engine.output_dir")]
    teacher_dir = tmp_path / "teacher"
    assert main(["train", "--config", "ainnoseg_tiny", *common, f"engine.output_dir={teacher_dir}"]) == 0
    teacher = json.loads((teacher_dir / "train_summary.json").read_text())["checkpoint"]
    images = synth_root / "val"
    out = tmp_path / "pseudo"
    # the run folder names its checkpoint (the record hashes the file, not the folder)
    assert main(["pseudo-label", "--weights", str(teacher_dir), "--images", str(images), "--out", str(out),
                 "--threshold", "0.3", "--tta", "scales=1 flip"]) == 0
    record = json.loads((out / "pseudo_labels.json").read_text())
    assert record["threshold"] == 0.3 and len(record["teacher_sha256"]) == 64 and record["images"] == 24
    assert record["teacher"] == str(teacher_dir / "model_final.pth")
    assert len(list((out / "annotations/pseudo").glob("*.png"))) == 24
    # the labels are the teacher's predictions as predict makes them (eval mode: HRNet's BatchNorm on its
    # running statistics); they once came from the teacher in training mode. At a threshold of 1/K every
    # pixel is kept, so every pixel is compared.
    from panoptix.engine.build import load_ensemble
    from panoptix.engine.predictor import Predictor

    every = tmp_path / "pseudo_every_pixel"
    assert main(["pseudo-label", "--weights", str(teacher_dir), "--images", str(images), "--out", str(every),
                 "--threshold", str(1 / len(CATS)), "--tta", "scales=1 flip"]) == 0
    tta, _ = load_ensemble([(str(teacher_dir), 1.0)], "scales=1 flip")
    files = sorted(images.glob("*.jpg"))[:6]
    predicted = Predictor(tta.model)([np.asarray(Image.open(f).convert("RGB")) for f in files])
    for f, result in zip(files, predicted):
        labels = np.asarray(Image.open(every / "annotations/pseudo" / f"{f.stem}.png"))
        assert np.array_equal(labels, np.asarray(CATS)[result.extra["semantic"].numpy()]), f.name
    # a student on mixed batches, then the whole loop through the command
    student = tmp_path / "student"
    assert main(["train", "--config", "ainnoseg_tiny", *common, f"engine.output_dir={student}",
                 f"data.pseudo.root={out}", "data.labelled_ratio=0.5"]) == 0
    capsys.readouterr()
    assert main(["self-train", "--config", "ainnoseg_tiny", "--images", str(images), "--out", str(tmp_path / "st"),
                 "--rounds", "1", "--teacher", teacher, "--finetune-iters", "2", *common]) == 0
    summary = json.loads((tmp_path / "st" / "self_train_summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["round1/student", "round1/finetune"]
    assert all(0 <= s["mIoU"] <= 100 for s in summary["stages"])
    assert "round1/finetune" in capsys.readouterr().out


@pytest.mark.slow
def test_self_train_under_torchrun_exits_with_every_stage_on_two_ranks(synth_root, tmp_path):
    """Two gloo ranks: the stages train in one process group, each trainer is closed, rank 0 writes
    the pseudo-labels, and both processes leave the group and exit."""
    import os
    import subprocess
    import sys

    from panoptix.cli import main

    from conftest import REPO, free_port

    common = [o for o in tiny_overrides(synth_root, tmp_path / "unused", solver__batch_size=4)
              if not o.startswith("engine.output_dir")]
    teacher_dir = tmp_path / "teacher"
    assert main(["train", "--config", "ainnoseg_tiny", *common, f"engine.output_dir={teacher_dir}"]) == 0
    teacher = json.loads((teacher_dir / "train_summary.json").read_text())["checkpoint"]
    out = tmp_path / "st"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "panoptix.cli", "self-train", "--config", "ainnoseg_tiny",
           "--images", str(synth_root / "val"), "--out", str(out), "--rounds", "1", "--teacher", teacher,
           "--finetune-iters", "2", "--device", "cpu", *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("final teacher:") == 1                     # rank 0 reports
    summary = json.loads((out / "self_train_summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["round1/student", "round1/finetune"]
    for stage in ("round1/student", "round1/finetune"):
        assert json.loads((out / stage / "train_summary.json").read_text())["world_size"] == 2
    assert len(list((out / "round1" / "pseudo" / "annotations" / "pseudo").glob("*.png"))) == 24
