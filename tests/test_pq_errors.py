"""The evaluator's clear errors, and its in-memory and distributed forms."""

import json
import os
import re

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp_mp

from panoptix.data import PanopticFormatError
from panoptix.data.datasets import PanopticDataset
from panoptix.data.png import read_id_png, write_id_png
from panoptix.evaluation.panoptic import PanopticEvaluator, PQStat, evaluate_coco_panoptic
from panoptix.structures import PanopticResult, SegmentInfo

from conftest import free_port, perturbed


def _edit_pred(pj, fn):
    data = json.loads(pj.read_text())
    fn(data)
    pj.write_text(json.dumps(data))


def test_missing_predictions_are_listed(tmp_path, synth_val):
    pj, pd = perturbed(tmp_path, synth_val["gt_json"], synth_val["gt_dir"], 0)
    _edit_pred(pj, lambda d: d.__setitem__("annotations", d["annotations"][3:]))
    with pytest.raises(PanopticFormatError, match=r"no prediction for 3 ground-truth image\(s\): 1, 2, 3"):
        evaluate_coco_panoptic(synth_val["gt_json"], pj, synth_val["gt_dir"], pd)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["annotations"][0]["segments_info"].pop(), "in the prediction PNG but not in its JSON"),
    (lambda d: d["annotations"][0]["segments_info"].append({"id": 999999, "category_id": 1}),
     r"\[999999\] are in the prediction JSON but not in its PNG"),
    (lambda d: d["annotations"][0]["segments_info"][0].__setitem__("category_id", 4242),
     "category_id 4242: not in the categories"),
    (lambda d: d["annotations"][0]["segments_info"][0].__setitem__("id", "x"), "needs an integer 'id'"),
    (lambda d: d["annotations"][0].__setitem__("segments_info", {}), "'segments_info' must be a list"),
])
def test_prediction_errors(tmp_path, synth_val, edit, match):
    pj, pd = perturbed(tmp_path, synth_val["gt_json"], synth_val["gt_dir"], 0)
    _edit_pred(pj, edit)
    with pytest.raises(PanopticFormatError, match=match):
        evaluate_coco_panoptic(synth_val["gt_json"], pj, synth_val["gt_dir"], pd)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["annotations"][0]["segments_info"].append(dict(d["annotations"][0]["segments_info"][0])),
     r"segment id\(s\) \[\d+\] are listed more than once in segments_info; the last entry"),
    (lambda d: d["annotations"].append(dict(d["annotations"][0])),
     r"image_id\(s\) \[1\] are predicted more than once; the last prediction"),
])
def test_tolerated_oddities_warn_and_strict_refuses_them(tmp_path, synth_val, edit, match):
    """panopticapi evaluates these (the last entry wins); so do we, with a warning."""
    pj, pd = perturbed(tmp_path, synth_val["gt_json"], synth_val["gt_dir"], 0)
    before = evaluate_coco_panoptic(synth_val["gt_json"], pj, synth_val["gt_dir"], pd)
    _edit_pred(pj, edit)
    after = evaluate_coco_panoptic(synth_val["gt_json"], pj, synth_val["gt_dir"], pd)
    assert after["num_warnings"] == 1 and re.search(match, after["warnings"][0])
    assert after["All"]["pq"] == before["All"]["pq"]
    with pytest.raises(PanopticFormatError, match=match):
        evaluate_coco_panoptic(synth_val["gt_json"], pj, synth_val["gt_dir"], pd, strict=True)


def test_size_mismatch_and_malformed_json(tmp_path, synth_val):
    pj, pd = perturbed(tmp_path, synth_val["gt_json"], synth_val["gt_dir"], 0)
    first = sorted(pd.glob("*.png"))[0]
    write_id_png(first, read_id_png(first)[:-1])
    with pytest.raises(PanopticFormatError, match=r"000001.png \(image 1\): prediction is 96x95"):
        evaluate_coco_panoptic(synth_val["gt_json"], pj, synth_val["gt_dir"], pd)
    pj.write_text("{")
    with pytest.raises(PanopticFormatError, match="malformed JSON"):
        evaluate_coco_panoptic(synth_val["gt_json"], pj, synth_val["gt_dir"], pd)


def _results_from_files(pj, pd, meta):
    preds = PanopticDataset.coco(pj, pd, load_images=False)
    out = {}
    for rec in preds.records:
        ids = read_id_png(rec.png_path)
        out[rec.image_id] = PanopticResult(torch.from_numpy(ids.copy()), [
            SegmentInfo(s.id, s.category_id, meta.isthing(s.category_id)) for s in rec.segments])
    return out


def test_in_memory_evaluator_equals_file_evaluator(tmp_path, synth_val):
    pj, pd = perturbed(tmp_path, synth_val["gt_json"], synth_val["gt_dir"], 4)
    gt = PanopticDataset.coco(synth_val["gt_json"], synth_val["gt_dir"], load_images=False)
    preds = _results_from_files(pj, pd, gt.meta)
    ev = PanopticEvaluator(gt.meta)
    for sample in gt:
        ev.add(sample, preds[sample.image_id])
    files = evaluate_coco_panoptic(synth_val["gt_json"], pj, synth_val["gt_dir"], pd)
    mem = ev.all_reduce().summary()
    for g in ("All", "Things", "Stuff"):
        assert mem[g]["pq"] == pytest.approx(files[g]["pq"], abs=1e-12)
    assert ev.num_images == len(gt)


def _ddp_worker(rank, world, port, data, expected):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from panoptix.data.synthetic import synthetic_meta
        stat = PQStat(synthetic_meta(), data[rank].copy())
        stat.all_reduce()
        np.testing.assert_array_equal(stat.data, expected)
    finally:
        dist.destroy_process_group()


def test_pq_stat_all_reduce_over_two_gloo_ranks():
    from panoptix.data.synthetic import synthetic_meta

    rng = np.random.default_rng(0)
    c = synthetic_meta().num_classes
    data = [rng.integers(0, 9, size=(4, c)).astype(np.float64) for _ in range(2)]
    tmp_mp.spawn(_ddp_worker, args=(2, free_port(), data, data[0] + data[1]), nprocs=2, join=True)
