"""Inputs panopticapi accepts give its numbers; the oddities warn (errors under strict); every
error reports itself whatever else the file holds."""

import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest
from panopticapi.evaluation import pq_compute, pq_compute_single_core

from panoptix.data.png import id2rgb, write_id_png
from panoptix.evaluation.findings import PanopticInputError
from panoptix.evaluation.panoptic import evaluate_coco_panoptic

CATEGORIES = [{"id": 1, "name": "person", "isthing": 1}, {"id": 2, "name": "car", "isthing": 1},
              {"id": 10, "name": "sky", "isthing": 0}, {"id": 11, "name": "road", "isthing": 0}]


def write_set(root, name, images, categories=CATEGORIES):
    """``images``: (image_id, file_name, id map or None, segments_info); returns (json, folder)."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    anns = []
    for image_id, file_name, ids, segs in images:
        if ids is not None:
            write_id_png(folder / file_name, np.asarray(ids))
        anns.append({"image_id": image_id, "file_name": file_name, "segments_info": segs})
    path = root / f"{name}.json"
    path.write_text(json.dumps({"annotations": anns, "categories": categories}))
    return path, folder


def gt_segment(sid, cat, ids, iscrowd=0):
    return {"id": sid, "category_id": cat, "iscrowd": iscrowd, "area": int((np.asarray(ids) == sid).sum())}


def reference(gt_json, pred_json):
    with contextlib.redirect_stdout(io.StringIO()):
        return pq_compute(str(gt_json), str(pred_json))


def assert_agrees(ours, ref, tol=1e-12):
    for group in ("All", "Things", "Stuff"):
        assert ours[group]["n"] == ref[group]["n"], group
        for m in ("pq", "sq", "rq"):
            assert _close(ours[group][m], ref[group][m], tol), (group, m, ours[group][m], ref[group][m])
    for cat, r in ref["per_class"].items():
        for m in ("pq", "sq", "rq"):
            assert _close(ours["per_class"][cat][m], r[m], tol), (cat, m, ours["per_class"][cat][m], r[m])


def _close(a, b, tol):
    a, b = float(a), float(b)
    if math.isinf(a) or math.isinf(b) or math.isnan(a) or math.isnan(b):
        return (a == b) or (math.isnan(a) and math.isnan(b))
    return abs(a - b) <= tol


# --------------------------------------------------------------------------- the hand-built case
GT_IDS = np.array([
    [5, 5, 5, 5, 5, 5, 5, 5, 0, 0],
    [5, 5, 5, 5, 5, 5, 5, 5, 0, 0],
    [5, 5, 7, 7, 5, 5, 5, 5, 5, 5],
    [6, 6, 7, 7, 6, 8, 8, 8, 6, 6],
    [6, 6, 7, 7, 6, 8, 8, 8, 6, 6],
    [6, 6, 6, 6, 6, 6, 6, 6, 6, 6],
])
# The prediction calls the sky segment 0: its pixels are the PNG's 0 pixels.
PRED_IDS = np.array([
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 3],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 3],
    [0, 0, 1, 1, 0, 0, 0, 0, 3, 3],
    [3, 3, 1, 1, 3, 2, 2, 2, 3, 3],
    [3, 3, 1, 1, 3, 2, 2, 3, 3, 3],
    [3, 3, 3, 3, 3, 3, 3, 3, 3, 3],
])


def id0_case(root, pred_ids=PRED_IDS, extra_pred_segments=()):
    gt = write_set(root, "gt", [
        (1, "a.png", GT_IDS, [gt_segment(5, 10, GT_IDS), gt_segment(6, 11, GT_IDS), gt_segment(7, 1, GT_IDS),
                              gt_segment(8, 2, GT_IDS)]),
        (2, "b.png", GT_IDS, [gt_segment(5, 10, GT_IDS), gt_segment(6, 11, GT_IDS), gt_segment(7, 1, GT_IDS),
                              gt_segment(8, 2, GT_IDS)]),
    ])
    plain = np.where(PRED_IDS == 0, 4, PRED_IDS)
    pred = write_set(root, "pred", [
        (1, "a.png", pred_ids, [{"id": 0, "category_id": 10}, {"id": 1, "category_id": 1},
                                {"id": 2, "category_id": 2}, {"id": 3, "category_id": 11},
                                *extra_pred_segments]),
        (2, "b.png", plain, [{"id": 4, "category_id": 10}, {"id": 1, "category_id": 1}, {"id": 2, "category_id": 2},
                             {"id": 3, "category_id": 11}]),
    ])
    return gt, pred


def test_prediction_segment_with_id_0_is_evaluated_as_panopticapi_does(tmp_path):
    (gj, gd), (pj, pd) = id0_case(tmp_path)
    ours = evaluate_coco_panoptic(gj, pj, workers=1)
    ref = reference(gj, pj)
    assert_agrees(ours, ref)
    # The id-0 sky segment (16 pixels, 2 of them on VOID) matches the gt sky (IoU 16/18 > 0.5), as in image 2.
    assert ours["per_class"][10]["tp"] == 2 and ours["per_class"][10]["fp"] == 0
    assert ours["num_warnings"] == 1
    warning = ours["warnings"][0]
    assert "pred.json: image 1" in warning and "segment id 0 (category 10)" in warning
    assert_agrees(evaluate_coco_panoptic(gj, pj, workers=2), ref)


def test_strict_refuses_the_id_0_segment(tmp_path):
    (gj, _), (pj, _) = id0_case(tmp_path)
    with pytest.raises(PanopticInputError, match=r"pred.json: image 1: prediction segment id 0") as err:
        evaluate_coco_panoptic(gj, pj, strict=True)
    assert len(err.value.problems) == 1


def _corrupt(path):
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)


@pytest.mark.parametrize("break_it, expected", [
    (lambda pd, pj: write_id_png(pd / "a.png", PRED_IDS[:, :-1]),
     [r"pred/a.png \(image 1\): prediction is 9x6 \(WxH\), ground truth 10x6"]),
    (lambda pd, pj: _corrupt(pd / "a.png"), [r"pred/a.png \(image 1\): cannot decode panoptic PNG"]),
    (lambda pd, pj: (pd / "a.png").unlink(), [r"pred/a.png \(image 1\): panoptic PNG not found"]),
    (lambda pd, pj: write_id_png(pd / "a.png", np.where(PRED_IDS == 2, 77, PRED_IDS)),
     [r"pred/a.png \(image 1\): segment id\(s\) \[77\] are in the prediction PNG but not in its JSON",
      r"pred/a.png \(image 1\): segment id\(s\) \[2\] are in the prediction JSON but not in its PNG"]),
    (lambda pd, pj: _edit(pj, lambda d: d["annotations"][0]["segments_info"].append({"id": 55, "category_id": 1})),
     [r"pred/a.png \(image 1\): segment id\(s\) \[55\] are in the prediction JSON but not in its PNG"]),
    (lambda pd, pj: _edit(pj, lambda d: d["annotations"][0]["segments_info"].append({"id": 9, "category_id": 42})),
     [r"pred.json: image 1: prediction segment 9 category_id 42: not in the categories",
      r"pred/a.png \(image 1\): segment id\(s\) \[9\] are in the prediction JSON but not in its PNG"]),
    # Two errors in one file: the size mismatch does not hide the PNG id that the JSON lacks.
    (lambda pd, pj: write_id_png(pd / "a.png", np.where(PRED_IDS == 3, 77, PRED_IDS)[:-1]),
     [r"prediction is 10x5 \(WxH\), ground truth 10x6", r"\[77\] are in the prediction PNG but not in its JSON",
      r"\[3\] are in the prediction JSON but not in its PNG"]),
])
def test_each_error_reports_itself_on_top_of_the_id_0_case(tmp_path, break_it, expected):
    (gj, _), (pj, pd) = id0_case(tmp_path)
    break_it(pd, pj)
    with pytest.raises(PanopticInputError) as err:
        evaluate_coco_panoptic(gj, pj)
    problems = err.value.problems
    assert len(problems) == len(expected), problems
    for pattern, problem in zip(expected, problems):
        assert __import__("re").search(pattern, problem), (pattern, problem)
    assert not any("outside" in p or "id 0" in p for p in problems)   # the id-0 segment stays a warning
    assert "image 2" not in " ".join(problems)


def _edit(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_ground_truth_segment_with_id_0_as_panopticapi(tmp_path):
    """A gt id-0 segment owns the VOID pixels, which stay VOID for every other rule."""
    gt_ids = np.where(GT_IDS == 5, 0, GT_IDS)
    gt = write_set(tmp_path, "gt", [(1, "a.png", gt_ids, [
        {"id": 0, "category_id": 10, "iscrowd": 0, "area": 30}, gt_segment(6, 11, gt_ids), gt_segment(7, 1, gt_ids),
        gt_segment(8, 2, gt_ids)])])
    pred = write_set(tmp_path, "pred", [(1, "a.png", np.where(PRED_IDS == 0, 4, PRED_IDS), [
        {"id": 4, "category_id": 10}, {"id": 1, "category_id": 1}, {"id": 2, "category_id": 2},
        {"id": 3, "category_id": 11}])])
    ours = evaluate_coco_panoptic(gt[0], pred[0])
    assert_agrees(ours, reference(gt[0], pred[0]))
    # 24 pred pixels on gt 0: union = 30 + 24 - 24 - 24 = 6, so panopticapi's IoU is 24 / 6 = 4.0, and ours.
    assert ours["per_class"][10]["pq"] == pytest.approx(4.0)
    assert any("ground-truth segment id 0" in w for w in ours["warnings"])


# --------------------------------------------------------------------------- randomised differential test
def _blocky(rng, shape, values, p):
    low = rng.choice(values, size=(shape[0] // 2 + 1, shape[1] // 2 + 1), p=p)
    return np.kron(low, np.ones((2, 2), int))[: shape[0], : shape[1]]


def _random_case(rng):
    """A small ground truth and prediction with the oddities panopticapi accepts."""
    cats = [1, 2, 10, 11]
    images_gt, images_pred = [], []
    n_images = int(rng.integers(1, 4))
    for image_id in range(1, n_images + 1):
        h, w = int(rng.integers(6, 14)), int(rng.integers(6, 14))
        gt_ids = [int(v) for v in rng.choice(np.arange(1, 30), size=int(rng.integers(2, 6)), replace=False)]
        if rng.random() < 0.3:
            gt_ids[0] = 0                                           # a gt segment with id 0
        stray = 31 if rng.random() < 0.3 else None                  # a gt PNG id the JSON lacks
        pool = gt_ids + ([0] if 0 not in gt_ids else []) + ([stray] if stray else [])
        gmap = _blocky(rng, (h, w), pool, None)
        segs = []
        for sid in gt_ids:
            cat = int(rng.choice(cats + [99])) if rng.random() < 0.15 else int(rng.choice(cats))
            area = int((gmap == sid).sum())
            if rng.random() < 0.2:
                area += int(rng.integers(-3, 4))                    # a JSON area that differs from the PNG
            segs.append({"id": sid, "category_id": cat, "iscrowd": int(rng.random() < 0.2), "area": area})
        if rng.random() < 0.2:
            segs.append({**segs[-1], "category_id": int(rng.choice(cats))})   # repeated id: the last wins
        if rng.random() < 0.15:
            segs.append({"id": 40, "category_id": 1, "iscrowd": 0, "area": 3})   # in the JSON, not in the PNG
        images_gt.append((image_id, f"{image_id}.png", gmap, segs))

        # Prediction: the ground truth relabelled, some blocks overwritten, optionally id 0 as a segment.
        relabel = {v: int(rng.integers(1, 60)) for v in np.unique(gmap)}
        pmap = np.vectorize(lambda v: relabel[v] if v != 0 or rng.random() < 0.5 else 0)(gmap)
        noise = _blocky(rng, (h, w), [0, 61, 62, -1], [0.1, 0.1, 0.1, 0.7])
        pmap = np.where(noise >= 0, noise, pmap)
        present = [int(v) for v in np.unique(pmap)]
        psegs = [{"id": v, "category_id": int(rng.choice(cats))} for v in present if v != 0]
        if 0 in present and rng.random() < 0.5:
            psegs.append({"id": 0, "category_id": int(rng.choice(cats))})
        if psegs and rng.random() < 0.2:
            psegs.insert(0, {**psegs[-1], "category_id": int(rng.choice(cats))})  # repeated: the last wins
        images_pred.append((image_id, f"{image_id}.png", pmap, psegs))
    if rng.random() < 0.2:
        images_gt.append(images_gt[0])                               # an image annotated twice
    if rng.random() < 0.2:
        first = images_pred[0]
        images_pred.insert(0, (first[0], "old.png", np.zeros_like(first[2]) + 1, [{"id": 1, "category_id": 2}]))
    if rng.random() < 0.2:
        images_pred.append((77, "extra.png", np.ones((4, 4), int), [{"id": 1, "category_id": 1}]))
    return images_gt, images_pred


def _reference_per_class(gt_json, pred_json, gt_dir, pred_dir):
    """panopticapi's per-core function on the pairs pq_compute would make (no worker pool)."""
    gt, pred = json.loads(gt_json.read_text()), json.loads(pred_json.read_text())
    categories = {c["id"]: c for c in gt["categories"]}
    preds = {a["image_id"]: a for a in pred["annotations"]}
    matched = [(a, preds[a["image_id"]]) for a in gt["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()), np.errstate(divide="ignore", invalid="ignore"):
        stat = pq_compute_single_core(0, copy.deepcopy(matched), str(gt_dir), str(pred_dir), categories)
    return {cat: stat[cat] for cat in categories}


def test_random_inputs_panopticapi_accepts_give_its_numbers(tmp_path):
    rng = np.random.default_rng(2026)
    checked = 0
    for case in range(150):
        root = tmp_path / f"case{case}"
        images_gt, images_pred = _random_case(rng)
        gj, gd = write_set(root, "gt", images_gt)
        pj, pd = write_set(root, "pred", images_pred)
        try:
            ref = _reference_per_class(gj, pj, gd, pd)
        except Exception:          # panopticapi refuses it: not a case for this test
            continue
        ours = evaluate_coco_panoptic(gj, pj, gd, pd)
        for cat, r in ref.items():
            o = ours["per_class"][cat]
            assert (o["tp"], o["fp"], o["fn"]) == (r.tp, r.fp, r.fn), (case, cat)
            if r.tp + r.fp + r.fn:
                denom = r.tp + 0.5 * r.fp + 0.5 * r.fn
                assert _close(o["pq"], r.iou / denom, 1e-12), (case, cat, o["pq"], r.iou / denom)
        checked += 1
    assert checked >= 100    # most random cases are ones panopticapi accepts


def test_oddities_are_warnings_and_strict_errors(tmp_path):
    gt = write_set(tmp_path, "gt", [
        (1, "a.png", GT_IDS, [gt_segment(5, 10, GT_IDS), {"id": 6, "category_id": 11, "iscrowd": 0},
                              gt_segment(7, 1, GT_IDS), gt_segment(8, 2, GT_IDS), gt_segment(8, 2, GT_IDS)]),
    ], categories=CATEGORIES + [{"id": 2, "name": "car", "isthing": True}])
    pred = write_set(tmp_path, "pred", [
        (1, "a.png", GT_IDS, [{"id": 5, "category_id": 10}, {"id": 6, "category_id": 11}, {"id": 7, "category_id": 1},
                              {"id": 8, "category_id": 2}]),
        (9, "x.png", GT_IDS[:2], [{"id": 5, "category_id": 10}]),
    ])
    ours = evaluate_coco_panoptic(gt[0], pred[0])
    text = "\n".join(ours["warnings"])
    for expected in ("category id(s) [2] are listed more than once", "segment id(s) [8] are listed more than once",
                     "[6] have no numeric 'area'", "1 prediction(s) for image ids not in the ground truth"):
        assert expected in text
    assert ours["All"]["pq"] == 1.0
    with pytest.raises(PanopticInputError) as err:
        evaluate_coco_panoptic(gt[0], pred[0], strict=True)
    assert len(err.value.problems) == ours["num_warnings"] == 4


def test_palette_png_of_the_rgb_ids_is_read_as_rgb(tmp_path):
    from PIL import Image

    (gj, _), (pj, pd) = id0_case(tmp_path)
    ref = evaluate_coco_panoptic(gj, pj)
    Image.fromarray(id2rgb(PRED_IDS)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(pd / "a.png")
    assert_agrees(evaluate_coco_panoptic(gj, pj), ref, tol=0)
