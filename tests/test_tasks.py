"""The task contract: systems declare a task, and the engine asks the task, never the kind of system."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from panoptix.data.datasets import PanopticDataset
from panoptix.engine.ensemble import TTASettings, tta_model
from panoptix.engine.predictor import Predictor, evaluate_dataset
from panoptix.engine.tasks import Task, task_of
from panoptix.engine.tasks.panoptic import PanopticTask
from panoptix.engine.tasks.semantic import SemanticTask
from panoptix.registry import TASKS

from conftest import seeded_model


def test_systems_and_their_wrappers_declare_their_task(synth_root):
    meta = PanopticDataset.synthetic(synth_root, "val").meta
    two_stage, parser = seeded_model(meta, "panoptic_fpn_tiny"), seeded_model(meta, "ainnoseg_tiny")
    assert {"panoptic", "semantic"} <= set(TASKS.names())
    assert isinstance(task_of(two_stage), PanopticTask) and isinstance(task_of(parser), SemanticTask)
    assert isinstance(task_of(seeded_model(meta, "ciae_tiny")), PanopticTask)
    settings = TTASettings.parse("flip")
    assert task_of(tta_model([parser], [1.0], settings)).name == "semantic"
    assert task_of(tta_model([two_stage], [1.0], settings)).name == "panoptic"


def test_headlines_are_percent_rows():
    panoptic = {"All": {"pq": 0.5, "sq": 0.8, "rq": 0.625}, "Things": {"pq": 0.4}, "Stuff": {"pq": 0.6}}
    assert PanopticTask().headline(panoptic) == pytest.approx({"PQ": 50, "SQ": 80, "RQ": 62.5, "PQ_th": 40,
                                                               "PQ_st": 60})
    semantic = {"mIoU": 0.3, "pixel_accuracy": 0.7, "ade_score": 0.5}
    assert SemanticTask().headline(semantic) == pytest.approx({"mIoU": 30, "pixel_acc": 70, "ADE": 50})
    assert set(PanopticTask.curve_keys) <= set(PanopticTask().headline(panoptic))
    assert set(SemanticTask.curve_keys) <= set(SemanticTask().headline(semantic))


class _Counting:
    def __init__(self):
        self.n = 0

    def add(self, sample, result):
        self.n += 1

    def all_reduce(self):
        return self

    def summary(self):
        return {"images": self.n}


class _CountTask(Task):
    name = "count_test"

    def evaluator(self, meta):
        return _Counting()


class _Stub(nn.Module):
    task = "count_test"

    def forward(self, images):
        return [None for _ in images]


def test_a_new_task_is_one_registered_class(synth_root):
    """The engine's evaluation loop takes a task it has never heard of, with no edit."""
    TASKS.register("count_test")(_CountTask)
    ds = PanopticDataset.synthetic(synth_root, "val")
    assert evaluate_dataset(Predictor(_Stub(), "cpu", batch_size=5), ds, range(7)) == {"images": 7}


def test_merges_declare_what_they_need_and_the_ablation_asks_them():
    from functools import partial

    from panoptix.engine.ablation_runs import variant_overrides as _variant_overrides
    from panoptix.fusion.heuristic import heuristic_fusion
    from panoptix.fusion.needs import needs_head, reads_logits, single_model
    from panoptix.fusion.ranking import ranking_x_score_fusion
    from panoptix.fusion.upsnet import upsnet_fusion

    assert needs_head(heuristic_fusion) is None and not single_model(heuristic_fusion)
    assert needs_head(partial(upsnet_fusion, score_thresh=0.3)) == ("upsnet_head", "upsnet")
    assert reads_logits(upsnet_fusion) and not single_model(upsnet_fusion)
    assert single_model(ranking_x_score_fusion) and not reads_logits(ranking_x_score_fusion)
    assert _variant_overrides("heuristic", {}) == ["model.ranking_head=null", "model.upsnet_head=null"]
    assert _variant_overrides("ranking_x_score", {"ranking_head": {"name": "mine"}}) == \
        ["model.ranking_head.name=mine", "model.upsnet_head=null"]
    assert _variant_overrides("upsnet", {}) == ["model.ranking_head=null", "model.upsnet_head.name=upsnet"]


def test_an_export_needs_the_systems_own_graph(synth_root):
    from panoptix.engine.export import export_onnx
    from panoptix.errors import ExportError

    meta = PanopticDataset.synthetic(synth_root, "val").meta
    ciae = seeded_model(meta, "ciae_tiny")
    assert ciae.export_graph((64, 64)).size == (64, 64)
    assert seeded_model(meta, "panoptic_fpn_tiny").export_graph((64, 64)).size == (64, 64)
    with pytest.raises(ExportError, match="Linear has no export_graph"):
        export_onnx(torch.nn.Linear(1, 1), "unused.onnx", (64, 64))
