"""ADE20K mIoU: with a category list, the benchmark's mean over all classes (mit-semseg's
intersectionAndUnion, absent classes counting 0) by default; the mean over present classes on request."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mit_semseg.utils import intersectionAndUnion

from panoptix.cli import main
from panoptix.data.formats import ADE20K_NUM_CLASSES
from panoptix.data.labels import write_label_png
from panoptix.data.meta import Category, DatasetMeta

K = ADE20K_NUM_CLASSES
SUBSET = [1, 3, 5, 12, 20, 33, 47, 80, 99, 120, 150]       # the 11 classes this small set holds


@pytest.fixture()
def subset_folders(tmp_path):
    """Four 32x40 images whose ground truth uses 11 of the 150 classes; predictions mostly right."""
    rng = np.random.default_rng(0)
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    pairs = []
    for i in range(4):
        gt = rng.choice(SUBSET, size=(32, 40)).astype(np.int64)
        gt[:3] = 0                                              # unlabelled rows are ignored
        pred = np.where(rng.random(gt.shape) < 0.8, gt, rng.choice(SUBSET, size=gt.shape))
        pred = np.where(gt == 0, rng.integers(1, K + 1, gt.shape), pred)  # anything on ignored pixels
        write_label_png(gt_dir / f"{i}.png", gt)
        write_label_png(pred_dir / f"{i}.png", pred)
        pairs.append((gt, pred))
    categories = tmp_path / "categories.json"
    meta = DatasetMeta([Category(c, f"class_{c}", False, (c, c, c)) for c in range(1, K + 1)])
    categories.write_text(json.dumps(meta.to_json()))
    return gt_dir, pred_dir, categories, pairs


def _mit_semseg_miou(pairs) -> float:
    """The benchmark's figure: mit-semseg's per-image intersection and union (0-based labels, -1
    unlabelled), summed, IoU = I / (U + 1e-10) per class, mean over all 150."""
    inter, union = np.zeros(K), np.zeros(K)
    for gt, pred in pairs:
        i, u = intersectionAndUnion(pred - 1, gt - 1, K)
        inter, union = inter + i, union + u
    return float((inter / (union + 1e-10)).mean())


def test_the_benchmark_convention_is_the_default_with_a_category_list(subset_folders, tmp_path, capsys):
    gt_dir, pred_dir, categories, pairs = subset_folders
    out = tmp_path / "all.json"
    assert main(["evaluate", "--gt-labels", str(gt_dir), "--pred-labels", str(pred_dir), "--categories",
                 str(categories), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mean over all 150 classes, absent ones counting 0 (ADE20K benchmark)" in printed
    result = json.loads(out.read_text())
    assert result["miou_over"] == "all" and "ADE20K benchmark" in result["miou_convention"]
    reference = _mit_semseg_miou(pairs)
    assert result["mIoU"] == pytest.approx(reference, abs=1e-9)
    assert reference < 0.1                                      # 11 of 150 classes present

    out = tmp_path / "present.json"
    assert main(["evaluate", "--gt-labels", str(gt_dir), "--pred-labels", str(pred_dir), "--categories",
                 str(categories), "--miou-over", "present", "--out", str(out)]) == 0
    assert "mIoU: mean over the 11 of 150 classes present" in capsys.readouterr().out
    present = json.loads(out.read_text())
    assert present["miou_over"] == "present"
    ious = [v for v in present["per_class_iou"].values() if v is not None]
    assert present["mIoU"] == pytest.approx(np.mean(ious), abs=1e-12) and present["mIoU"] > 0.5


def test_without_a_category_list_the_present_classes_are_averaged_and_named(subset_folders, tmp_path, capsys):
    gt_dir, pred_dir, _, _ = subset_folders
    out = tmp_path / "r.json"
    assert main(["evaluate", "--gt-labels", str(gt_dir), "--pred-labels", str(pred_dir), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["miou_over"] == "present"
    assert "classes present" in capsys.readouterr().out
