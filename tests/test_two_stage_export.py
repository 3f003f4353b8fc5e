"""The two-stage and scene parsing systems exported whole: the fixed-shape merges against the PyTorch
merges (a hand-built overlap chain, then random-init models with thresholds 0 so that there are
segments), the ONNX graphs against PyTorch with onnxruntime, the file's metadata, and
``panoptix predict --weights m.onnx`` against the checkpoint it came from."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from panoptix.data.datasets import PanopticDataset
from panoptix.engine.checkpoint import last_checkpoint
from panoptix.errors import ExportError
from panoptix.structures import Instances

from conftest import image_batch, seeded_model

ZERO = ("model.fusion.score_thresh=0.0", "model.instance_head.box_score_thresh=0.0")
MERGES = {
    "heuristic": ("panoptic_fpn_tiny", *ZERO),
    "heuristic_stuff_only": ("panoptic_fpn_tiny", *ZERO, "model.fusion.stuff_source=stuff_only"),
    "ranking": ("upsnet_srm_tiny", *ZERO, "model.fusion.name=ranking"),
    "ranking_x_score": ("upsnet_srm_tiny", *ZERO, "model.fusion.name=ranking_x_score"),
    "upsnet": ("upsnet_srm_tiny", *ZERO, "model.fusion={_delete_: true, name: upsnet, score_thresh: 0.0, "
               "stuff_min_area_fraction: 0.0038}"),
    "cascade": ("coco2019_x101_dcn_cascade_upsnet_tiny", *ZERO, "model.refine=null"),
    "htc": ("lwl_htc_tiny", *ZERO),
}


def _graph_outputs(model, image):
    with torch.no_grad():
        return model.export_graph(tuple(image.shape[-2:]))(image)


def _segments(ids, categories, scores, areas, thing_ids):
    from panoptix.engine.export import segments_from_outputs

    return [(s["id"], s["category_id"], s["area"], round(s["score"], 5))
            for s in segments_from_outputs(np.asarray(ids), np.asarray(categories), np.asarray(scores),
                                           np.asarray(areas), thing_ids)]


def _torch_segments(result):
    return [(s.id, s.category_id, s.area, round(s.score, 5)) for s in result.segments]


def test_the_unrolled_overlap_rule_follows_a_chain_of_decisions():
    """B lies two thirds under A, so B goes; C lies three quarters under B and a quarter under A, so C
    stays only because B went (a decision that depends on an earlier rejection); D lies inside A and
    goes. Stuff fills the free pixels of its class."""
    from panoptix.fusion.graph_merge import heuristic_graph_merge, pad_rows
    from panoptix.fusion.heuristic import heuristic_fusion

    h, w = 8, 12
    masks = torch.zeros(4, h, w)
    masks[0, 0:4, 0:4] = 1    # A: 16 px
    masks[1, 0:6, 0:4] = 1    # B: 24 px, 16 under A
    masks[2, 3:7, 0:4] = 1    # C: 16 px, 4 under A, 12 under B
    masks[3, 1:3, 1:3] = 1    # D: inside A
    scores, labels = torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([0, 1, 0, 1])
    boxes = torch.tensor([[0, 0, 4, 8], [2, 0, 6, 8], [5, 0, 9, 8], [1, 2, 3, 4]], dtype=torch.float32)
    logits = torch.zeros(3, h, w)
    logits[1, :, 6:] = 1      # stuff class 1 on the right
    table, things = [-1, 5, 6], [1, 2]
    ref = heuristic_fusion(Instances(boxes, scores, labels, masks, image_size=(h, w)), logits, table, things,
                           stuff_min_area=1)
    assert [(s.category_id, s.area) for s in ref.segments] == [(1, 16), (1, 12), (5, 48)]
    d = 6   # two padding rows
    ids, cats, segment_scores, areas = heuristic_graph_merge(
        pad_rows(scores, d, -1.0), pad_rows(labels, d), pad_rows(masks, d),
        pad_rows(torch.ones(4, dtype=torch.bool), d), logits, torch.tensor(table), torch.tensor(things), min_area=1.0)
    assert torch.equal(ids, ref.ids)
    assert _segments(ids, cats, segment_scores, areas, things) == _torch_segments(ref)


@pytest.mark.parametrize("merge", list(MERGES))
def test_the_graph_gives_the_pytorch_segments(synth_root, merge):
    ds = PanopticDataset.synthetic(synth_root, "val")
    model = seeded_model(ds.meta, *MERGES[merge]).eval()
    _, images = image_batch(ds, 2)
    for image in images:
        with torch.no_grad():
            result = model([image])[0]
        ids, cats, scores, areas = _graph_outputs(model, image)
        assert torch.equal(ids, result.ids)
        assert _segments(ids, cats, scores, areas, ds.meta.thing_ids) == _torch_segments(result)
        assert any(s.isthing for s in result.segments) and any(not s.isthing for s in result.segments)


def test_export_refuses_a_refinement_and_a_merge_without_a_fixed_shape_form(synth_root):
    ds = PanopticDataset.synthetic(synth_root, "val")
    model = seeded_model(ds.meta, "panoptic_fpn_tiny", "model.refine={name: crf}").eval()
    with pytest.raises(ExportError, match="model.refine .* does not export"):
        model.export_graph((96, 96))
    model = seeded_model(ds.meta, "panoptic_fpn_tiny").eval()
    model.fusion = lambda *args, **kwargs: None
    with pytest.raises(ExportError, match="has no fixed-shape form"):
        model.export_graph((96, 96))
    model = seeded_model(ds.meta, "panoptic_fpn_tiny", "model.preprocess.min_size_test=96").eval()
    with pytest.raises(ExportError, match="export at --size 96 128"):
        model.export_graph((72, 96))


@pytest.mark.slow
@pytest.mark.parametrize("merge", ["heuristic", "ranking", "upsnet", "htc"])
def test_onnx_graph_matches_pytorch_with_segments(synth_root, tmp_path, merge):
    pytest.importorskip("onnxruntime")
    from panoptix.engine.export import check_onnx, export_onnx, segments_from_outputs
    from panoptix.engine.onnx_metadata import read_metadata

    ds = PanopticDataset.synthetic(synth_root, "val")
    model = seeded_model(ds.meta, *MERGES[merge]).eval()
    _, images = image_batch(ds, 1)
    images = [images[0][:, :72, :90]]   # not a multiple of 32: the padding is computed right in the graph
    path = tmp_path / f"{merge}.onnx"
    export_onnx(model, path, tuple(images[0].shape[-2:]))
    check = check_onnx(model, path, image=images[0], repeat=1)
    assert check["equal"] and check["equal_fraction"] == 1.0
    import onnxruntime as ort

    ids, cats, scores, areas = ort.InferenceSession(str(path)).run(None, {"image": images[0].numpy()})
    with torch.no_grad():
        result = model([images[0]])[0]
    assert _segments(ids, cats, scores, areas, read_metadata(path)) == _torch_segments(result)
    assert _segments(ids, cats, scores, areas, path) == _torch_segments(result)
    assert all(type(v) is int for s in segments_from_outputs(ids, cats, scores, areas, path)
               for v in (s["id"], s["category_id"], s["area"]))
    assert any(s.isthing for s in result.segments)


@pytest.mark.slow
def test_scene_parser_exports_its_label_map(synth_root, tmp_path):
    pytest.importorskip("onnxruntime")
    from panoptix.engine.export import check_onnx, export_onnx

    ds = PanopticDataset.synthetic(synth_root, "val")
    model = seeded_model(ds.meta, "ainnoseg_tiny", "model.preprocess.min_size_test=0").eval()
    path = tmp_path / "sem.onnx"
    assert export_onnx(model, path, (64, 96))["size"] == [64, 96]
    check = check_onnx(model, path, repeat=1)
    assert check["equal"]
    from panoptix.engine.onnx_system import OnnxSystem

    system = OnnxSystem(path)   # what predict --weights sem.onnx runs: the label map as a result
    image = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(3))
    ours, theirs = system([image])[0], model([image])[0]
    assert system.task == "semantic" and torch.equal(ours.ids, theirs.ids)
    assert torch.equal(ours.extra["semantic"], theirs.extra["semantic"])
    assert [(s.id, s.category_id, s.area) for s in ours.segments] == \
        [(s.id, s.category_id, s.area) for s in theirs.segments]


def test_metadata_refuses_a_graph_that_lost_its_input(tmp_path):
    pytest.importorskip("onnx")
    from panoptix.engine.onnx_metadata import read_metadata, write_metadata

    class Constant(torch.nn.Module):
        def forward(self, image):
            return torch.zeros(3)

    path = tmp_path / "constant.onnx"
    torch.onnx.export(Constant(), (torch.rand(3, 4, 4),), str(path), dynamo=False, input_names=["image"])
    with pytest.raises(ExportError, match="does not read its image input"):
        write_metadata(path, {"version": "x"})
    with pytest.raises(ExportError, match="no panoptix metadata"):
        read_metadata(path)


@pytest.mark.slow
def test_predict_with_the_onnx_file_writes_what_the_checkpoint_writes(synth_root, trained_tiny, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from panoptix.cli import main
    from panoptix.engine.onnx_metadata import read_metadata

    weights = str(last_checkpoint(trained_tiny))
    onnx = tmp_path / "m.onnx"
    images = synth_root / "val"
    assert main(["export", "--weights", weights, "--out", str(onnx), "--size", "96", "96", "--repeat", "1",
                 "--check-input", str(images), "--check-images", "3", *ZERO]) == 0
    assert "on 3 image(s) of" in (out := capsys.readouterr().out)
    assert "segment maps equal on 100.0000% of pixels (3 of 3 image(s) wholly" in out
    meta = read_metadata(onnx)
    assert meta["task"] == "panoptic" and meta["input"]["shape"] == [3, 96, 96]
    assert {c["name"] for c in meta["categories"]} >= {"sky", "square"} and all(len(c["color"]) == 3
                                                                                for c in meta["categories"])
    assert meta["normalisation"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert main(["predict", "--weights", weights, "--input", str(images), "--output", str(tmp_path / "pt"),
                 "--no-overlays", *ZERO]) == 0
    assert main(["predict", "--weights", str(onnx), "--input", str(images), "--output", str(tmp_path / "ox"),
                 "--no-overlays"]) == 0
    pt, ox = (json.loads((tmp_path / d / "panoptic_pred.json").read_text()) for d in ("pt", "ox"))
    # onnxruntime's scores differ from PyTorch's in the last float bits; all else is equal
    scores = [[s.pop("score") for a in run["annotations"] for s in a["segments_info"]] for run in (pt, ox)]
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)
    assert pt["annotations"] == ox["annotations"] and len(pt["annotations"]) == 24
    assert any(s["isthing"] for a in pt["annotations"] for s in a["segments_info"])
    import panoptix

    first = sorted(images.glob("*.jpg"))[0]
    ids = panoptix.load(str(onnx))(str(first)).ids   # the Python API takes the file too
    assert ids.shape == (96, 96) and ids.max() > 0
    for a in pt["annotations"]:
        name = a["file_name"]
        assert (tmp_path / "pt" / "panoptic_pred" / name).read_bytes() == \
            (tmp_path / "ox" / "panoptic_pred" / name).read_bytes()
    capsys.readouterr()
    assert main(["predict", "--weights", str(onnx), "--input", str(images), "--output", str(tmp_path / "x"),
                 "model.fusion.score_thresh=0.5"]) == 2
    assert "exported model, whole" in capsys.readouterr().err


@pytest.mark.slow
def test_an_onnx_model_resizes_other_sizes_and_says_so(synth_root, trained_tiny, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from panoptix.cli import main

    onnx = tmp_path / "m.onnx"
    assert main(["export", "--weights", str(last_checkpoint(trained_tiny)), "--out", str(onnx), "--size", "64", "64",
                 "--no-check", *ZERO]) == 0
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray((np.random.default_rng(0).random((80, 120, 3)) * 255).astype(np.uint8)).save(folder / "a.png")
    assert main(["predict", "--weights", str(onnx), "--input", str(folder), "--output", str(tmp_path / "o"),
                 "--no-overlays"]) == 0
    assert "m.onnx takes 64x64 images: 80x120 inputs are resized to it" in capsys.readouterr().err
    pred = json.loads((tmp_path / "o" / "panoptic_pred.json").read_text())["annotations"][0]
    png = np.array(Image.open(tmp_path / "o" / "panoptic_pred" / pred["file_name"]))
    assert png.shape[:2] == (80, 120)
    ids = png[..., 0].astype(np.int64) + 256 * png[..., 1].astype(np.int64) + 65536 * png[..., 2].astype(np.int64)
    assert {s["id"]: s["area"] for s in pred["segments_info"]} == \
        {int(i): int((ids == i).sum()) for i in np.unique(ids) if i}
