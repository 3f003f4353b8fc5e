"""panoptix's PQ against panopticapi-lite (the COCO reference implementation), figure by figure."""

import contextlib
import io
import json
import math

import numpy as np
import pytest
from panopticapi.evaluation import pq_compute
from PIL import Image

from panoptix.data.perturb import write_perturbed
from panoptix.evaluation.panoptic import evaluate_coco_panoptic

from conftest import perturbed

TOL = 1e-12


def reference(gt_json, pred_json, gt_dir, pred_dir):
    with contextlib.redirect_stdout(io.StringIO()):
        return pq_compute(str(gt_json), str(pred_json), str(gt_dir), str(pred_dir))


def assert_agrees(ours, ref):
    for group in ("All", "Things", "Stuff"):
        assert ours[group]["n"] == ref[group]["n"]
        for m in ("pq", "sq", "rq"):
            assert abs(ours[group][m] - ref[group][m]) <= TOL, (group, m, ours[group][m], ref[group][m])
    assert set(ours["per_class"]) == set(ref["per_class"])
    for cat, r in ref["per_class"].items():
        for m in ("pq", "sq", "rq"):
            assert abs(ours["per_class"][cat][m] - r[m]) <= TOL, (cat, m)


@pytest.mark.parametrize("seed, strength", [(0, 1.0), (1, 0.4), (2, 1.0)])
def test_synthetic_perturbed_agrees(tmp_path, synth_val, seed, strength):
    pj, pd = perturbed(tmp_path, synth_val["gt_json"], synth_val["gt_dir"], seed, strength)
    ours = evaluate_coco_panoptic(synth_val["gt_json"], pj, synth_val["gt_dir"], pd)
    ref = reference(synth_val["gt_json"], pj, synth_val["gt_dir"], pd)
    assert_agrees(ours, ref)
    assert 0.2 < ours["All"]["pq"] < 0.95   # the perturbation really changes things


def test_heavy_occlusion_set_agrees_with_two_workers(tmp_path, heavy_root):
    gt_json, gt_dir = heavy_root / "annotations/panoptic_val.json", heavy_root / "annotations/panoptic_val"
    pj, pd = perturbed(tmp_path, gt_json, gt_dir, 5)
    one = evaluate_coco_panoptic(gt_json, pj, gt_dir, pd, workers=1)
    two = evaluate_coco_panoptic(gt_json, pj, gt_dir, pd, workers=2)
    ref = reference(gt_json, pj, gt_dir, pd)
    assert_agrees(one, ref)
    assert_agrees(two, ref)
    again = evaluate_coco_panoptic(gt_json, pj, gt_dir, pd, workers=2)
    assert again["per_class"] == two["per_class"]  # chunks summed in a fixed order: the same floats


def test_coco_sample_against_itself(coco_sample):
    g, d = coco_sample["gt_json"], coco_sample["gt_dir"]
    ours = evaluate_coco_panoptic(g, g, d, d)
    assert_agrees(ours, reference(g, g, d, d))
    for group, n in (("All", 8), ("Things", 4), ("Stuff", 4)):
        assert ours[group]["pq"] == ours[group]["sq"] == ours[group]["rq"] == 1.0
        assert ours[group]["n"] == n


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_coco_sample_against_perturbed_copies(tmp_path, coco_sample, seed):
    g, d = coco_sample["gt_json"], coco_sample["gt_dir"]
    pj, pd = perturbed(tmp_path, g, d, seed)
    ours = evaluate_coco_panoptic(g, pj, d, pd)
    assert_agrees(ours, reference(g, pj, d, pd))
    assert ours["All"]["pq"] < 1.0


def test_copied_crowd_segment_is_not_a_false_positive(tmp_path, coco_sample):
    """A prediction that copies a crowd region lies on same-category crowd: ignored, not FP."""
    gt = json.loads(coco_sample["gt_json"].read_text())
    ours = evaluate_coco_panoptic(coco_sample["gt_json"], coco_sample["gt_json"], coco_sample["gt_dir"],
                                  coco_sample["gt_dir"])
    crowd_cats = {s["category_id"] for a in gt["annotations"] for s in a["segments_info"] if s["iscrowd"]}
    assert crowd_cats and all(ours["per_class"][c]["fp"] == 0 for c in crowd_cats)


def test_palette_predictions_where_panopticapi_crashes(tmp_path, synth_val):
    pj, pd = perturbed(tmp_path, synth_val["gt_json"], synth_val["gt_dir"], 11)
    rgb_result = evaluate_coco_panoptic(synth_val["gt_json"], pj, synth_val["gt_dir"], pd)
    for png in pd.glob("*.png"):
        Image.open(png).convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(png)
    # panopticapi's rgb2id reads a palette PNG's (H, W) indices as one colour
    with pytest.raises(TypeError, match="arrays can be converted to Python scalars"):
        reference(synth_val["gt_json"], pj, synth_val["gt_dir"], pd)
    assert_agrees(evaluate_coco_panoptic(synth_val["gt_json"], pj, synth_val["gt_dir"], pd), rgb_result)


def test_dataset_without_stuff(tmp_path, synth_val):
    """panopticapi divides by zero for the empty Stuff group; we report n=0 and NaN, others intact."""
    data = json.loads(synth_val["gt_json"].read_text())
    things = {c["id"] for c in data["categories"] if c["isthing"]}
    data["categories"] = [c for c in data["categories"] if c["isthing"]]
    for a in data["annotations"]:
        a["segments_info"] = [s for s in a["segments_info"] if s["category_id"] in things]
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    for a in data["annotations"]:   # stuff pixels become VOID
        src = np.array(Image.open(synth_val["gt_dir"] / a["file_name"]), dtype=np.int64)
        ids = src[..., 0] + 256 * src[..., 1] + 65536 * src[..., 2]
        keep = np.isin(ids, [s["id"] for s in a["segments_info"]])
        Image.fromarray(np.where(keep[..., None], src, 0).astype(np.uint8)).save(gt_dir / a["file_name"])
    gt_json = tmp_path / "gt.json"
    gt_json.write_text(json.dumps(data))
    pj, pd = tmp_path / "p.json", tmp_path / "p"
    write_perturbed(gt_json, gt_dir, pj, pd, seed=2)
    with pytest.raises(ZeroDivisionError):
        reference(gt_json, pj, gt_dir, pd)
    ours = evaluate_coco_panoptic(gt_json, pj, gt_dir, pd)
    assert ours["Stuff"]["n"] == 0 and math.isnan(ours["Stuff"]["pq"])
    assert ours["Things"]["n"] == 6 and ours["All"]["pq"] == ours["Things"]["pq"]
