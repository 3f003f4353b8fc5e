import math

import numpy as np
import pytest
import torch

from panoptix.evaluation.semantic import SemanticEvaluator, confusion_matrix, metrics_from_confusion


def test_confusion_by_hand():
    gt = torch.tensor([0, 0, 1, 1, 2, 255])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    conf = confusion_matrix(pred, gt, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    m = metrics_from_confusion(conf, ["a", "b", "c"])
    # IoU: a = 1/(2+2-1) = 1/3, b = 2/(2+3-2) = 2/3, c = 0/(1+0-0) = 0
    assert m["per_class_iou"] == pytest.approx({"a": 1 / 3, "b": 2 / 3, "c": 0.0})
    assert m["mIoU"] == pytest.approx(1 / 3)
    assert m["pixel_accuracy"] == pytest.approx(3 / 5)
    assert m["mean_accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert m["ade_score"] == pytest.approx((3 / 5 + 1 / 3) / 2)


def test_absent_class_is_left_out_of_the_mean():
    m = metrics_from_confusion(np.array([[5, 0, 0], [0, 5, 0], [0, 0, 0]]))
    assert math.isnan(m["per_class_iou"]["2"]) and m["mIoU"] == 1.0 and m["pixel_accuracy"] == 1.0


def test_evaluator_accumulates_and_rejects_bad_labels():
    ev = SemanticEvaluator(2)
    ev.update(np.array([[0, 1]]), np.array([[0, 0]]))
    ev.update(torch.tensor([1, 1]), torch.tensor([1, 255]))
    assert ev.all_reduce().conf.tolist() == [[1, 1], [0, 1]]
    assert ev.compute()["pixel_accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="predicted labels"):
        ev.update(np.array([2]), np.array([0]))
    with pytest.raises(ValueError, match="ground-truth labels"):
        ev.update(np.array([0]), np.array([7]))
