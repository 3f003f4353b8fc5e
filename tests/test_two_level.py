"""Two-level fusion (AntVisionPS, Hong et al. 2019): the per-class choice of end, instances taken per class from the
chosen end, averaged semantic probabilities, refusals, and fit-fusion / predict --two-level."""

from __future__ import annotations

import json
import math

import pytest
import torch

from panoptix.cli import main
from panoptix.fusion.two_level import FusionError, TwoLevelFusion, choose_ends, fuse_ends
from panoptix.structures import Instances, RawPanoptic


def test_choose_ends_takes_the_better_end_per_class():
    a = {1: {"pq": 0.5}, 2: {"pq": 0.2}, 3: {"pq": 0.4}}
    b = {1: {"pq": 0.3}, 2: {"pq": 0.6}, 3: {"pq": 0.4}}       # class 3: a tie keeps the first end
    assert choose_ends([a, b], [1, 2, 3, 4]) == {1: 0, 2: 1, 3: 0, 4: 0}
    assert choose_ends([{"7": {"pq": 0.1}}, {"7": {"pq": 0.2}}], [7]) == {7: 1}   # JSON keys are strings


def _raw(labels, scores, sem_logits):
    n = len(labels)
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]] * n)
    masks = torch.zeros(n, 4, 4)
    return RawPanoptic(Instances(boxes, torch.tensor(scores), torch.tensor(labels), masks, image_size=(4, 4)),
                       sem_logits, torch.zeros(3, 4, 4))


def test_fuse_ends_takes_each_class_from_its_end_and_averages_probabilities():
    sem_a = torch.zeros(2, 4, 4)
    sem_b = torch.zeros(2, 4, 4)
    sem_b[0] = math.log(3.0)                                      # b: softmax (0.75, 0.25)
    a = _raw([0, 1, 1], [0.9, 0.8, 0.7], sem_a)
    b = _raw([0, 1], [0.6, 0.5], sem_b)
    fused = fuse_ends([a, b], thing_ids=[10, 20], choice={10: 1, 20: 0})
    assert fused.instances.labels.tolist() == [1, 1, 0]           # a's two class-20 instances, b's class-10 one
    assert fused.instances.scores.tolist() == pytest.approx([0.8, 0.7, 0.6])
    assert fused.semantic_logits.exp()[:, 0, 0].tolist() == pytest.approx([0.625, 0.375])


def test_two_level_refuses_a_choice_that_does_not_fit(synth_root):
    from panoptix.data.datasets import PanopticDataset

    from conftest import seeded_model

    meta = PanopticDataset.synthetic(synth_root, "val").meta
    ends = [seeded_model(meta, "panoptic_fpn_tiny"), seeded_model(meta, "panoptic_fpn_tiny")]
    with pytest.raises(FusionError, match="lacks thing categories"):
        TwoLevelFusion(ends, {meta.thing_ids[0]: 0})
    with pytest.raises(FusionError, match="at least two"):
        TwoLevelFusion(ends[:1], {})


# Every instance and score kept, so that each end yields thing segments after 4 iterations.
KEEP_ALL = ["model.instance_head.box_score_thresh=0.0", "model.fusion.score_thresh=0.0"]


def _things(result):
    """The thing segments of a result: (category, area) and their pixels."""
    things = [s for s in result.segments if s.isthing]
    pixels = torch.zeros_like(result.ids, dtype=torch.bool)
    for s in things:
        pixels |= result.ids == s.id
    return sorted((s.category_id, s.area) for s in things), pixels


@pytest.mark.slow
def test_fit_fusion_and_predict_two_level(trained_tiny, trained_tiny_other_seed, synth_root, synth_val, tmp_path):
    """Two different ends: every thing class routed to end b gives exactly b's own thing segments, and
    routed to end a, a's (the merge pastes things from instances alone); the ends differ, so routing
    that ignores the record, or swaps the ends, fails."""
    from panoptix.data.png import read_image
    from panoptix.engine.build import load_predictor, load_two_level
    from panoptix.engine.checkpoint import last_checkpoint

    a, b = str(last_checkpoint(trained_tiny)), str(last_checkpoint(trained_tiny_other_seed))
    record_path = tmp_path / "two_level.json"
    assert main(["fit-fusion", "--ends", a, b, "--fit-data", str(synth_root), "--fit-split", "val",
                 "--limit", "4", "--test-data", str(synth_root), "--test-split", "val", "--out",
                 str(record_path)]) == 0
    record = json.loads(record_path.read_text())
    assert record["ends"] == [a, b] and len(record["classes"]) == 6
    assert {r["system"] for r in record["table"]} == {a, b, "two-level fusion"}
    images = [read_image(p) for p in sorted(synth_val["image_dir"].iterdir())[:4]]
    own = [load_predictor(w, overrides=KEEP_ALL, device="cpu")[0](images) for w in (a, b)]
    assert any(_things(x)[0] != _things(y)[0] for x, y in zip(*own))   # the two ends differ

    def fused(choice: dict[int, int]):
        for c in record["classes"]:
            c["end"] = choice.get(c["category_id"], 0)
        record_path.write_text(json.dumps(record))
        return load_two_level(record_path, overrides=KEEP_ALL, device="cpu")[0](images)

    thing_ids = [c["category_id"] for c in record["classes"]]
    for end in (0, 1):
        for got, want in zip(fused({c: end for c in thing_ids}), own[end]):
            assert _things(got)[0] == _things(want)[0]
            assert torch.equal(_things(got)[1], _things(want)[1])
    pred = tmp_path / "pred"
    assert main(["predict", "--two-level", str(record_path), "--input", str(synth_val["image_dir"]), "--output",
                 str(pred), "--no-overlays"]) == 0
    assert json.loads((pred / "predict_summary.json").read_text())["images"] == 24


@pytest.mark.slow
def test_an_ensemble_is_an_end_and_the_default_merge_is_the_heuristic(trained_tiny, trained_tiny_other_seed,
                                                                       synth_root, synth_val, tmp_path):
    """AntVisionPS's E-UPS end is a weighted ensemble: an end written a.pth:w,b.pth:w fuses as that
    ensemble predicts alone; the record names the heuristic merge even when the first end's is upsnet."""
    from panoptix.data.png import read_image
    from panoptix.engine.build import load_ensemble, load_two_level
    from panoptix.engine.checkpoint import last_checkpoint

    a, b = str(last_checkpoint(trained_tiny)), str(last_checkpoint(trained_tiny_other_seed))
    ensemble = f"{a}:0.4,{b}:1.2"
    record_path = tmp_path / "two_level.json"
    assert main(["fit-fusion", "--ends", ensemble, b, "--fit-data", str(synth_root), "--limit", "2", "--out",
                 str(record_path), "model.fusion={_delete_: true, name: upsnet}"]) == 0
    record = json.loads(record_path.read_text())
    assert record["ends"] == [ensemble, b] and record["fit"]["fusion"] == "heuristic"
    for c in record["classes"]:
        c["end"] = 0
    record_path.write_text(json.dumps(record))
    images = [read_image(p) for p in sorted(synth_val["image_dir"].iterdir())[:3]]
    upsnet_ends = [*KEEP_ALL, "model.fusion={_delete_: true, name: upsnet}"]   # the ends' own merge: upsnet
    fused_predictor = load_two_level(record_path, overrides=upsnet_ends, device="cpu")[0]
    assert fused_predictor.model.ends[0].fusion.func.__name__ == "upsnet_fusion"
    assert fused_predictor.model.fusion.func.__name__ == "heuristic_fusion"
    alone = load_ensemble([(a, 0.4), (b, 1.2)], overrides=KEEP_ALL, device="cpu")[0](images)
    for got, want in zip(fused_predictor(images), alone):
        assert _things(got)[0] == _things(want)[0]
