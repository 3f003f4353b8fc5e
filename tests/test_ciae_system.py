"""The CIAE system end to end: losses and gradients, inference, the memory in checkpoints, the ONNX
export checked against PyTorch with onnxruntime, and the ablation switches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from panoptix.data.datasets import PanopticDataset
from panoptix.engine.checkpoint import last_checkpoint, safe_torch_load
from panoptix.models.systems.ciae import CIAEPanoptic

from conftest import image_batch, seeded_model, tiny_overrides


def _model(meta, *overrides) -> CIAEPanoptic:
    return seeded_model(meta, "ciae_tiny", *overrides)


def _targets(model, samples):
    build = model.target_builder()
    return [build(s) for s in samples]


def test_training_losses_are_finite_and_reach_every_branch(synth_root):
    ds = PanopticDataset.synthetic(synth_root, "val")
    model = _model(ds.meta).train()
    samples, images = image_batch(ds)
    before = model.loss.memory.clone()
    losses = model(images, _targets(model, samples))
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_box", "loss_fcos_ctr", "loss_cae", "loss_iae"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    (losses["loss_cae"] + losses["loss_iae"]).backward()
    # The embedding loss trains the embedding branch and, through the box embeddings, the regression tower.
    assert model.embedding.pixel.weight.grad.abs().sum() > 0
    assert model.detector.box_embedding.weight.grad.abs().sum() > 0
    assert model.detector.cls_logits.weight.grad is None
    assert int(model.loss.step) == 1 and not torch.equal(before, model.loss.memory)


def test_inference_gives_one_segment_per_id_with_detector_categories(synth_root):
    ds = PanopticDataset.synthetic(synth_root, "val")
    model = _model(ds.meta, "model.detector.score_thresh=0.0").eval()
    _, images = image_batch(ds)
    raws = model.predict_raw(images)
    assert raws[0].embeddings.shape == (32, *images[0].shape[-2:])
    assert torch.allclose(raws[0].embeddings.norm(dim=0), torch.ones(images[0].shape[-2:]), atol=1e-4)
    inst = raws[0].instances
    assert len(inst) > 0 and inst.extra["query"].shape == (len(inst), 32)
    result = model.fuse(raws[0])
    assert result.extra["merge_seconds"] > 0 and result.extra["network_seconds"] > 0
    ids = result.ids.numpy()
    assert ids.shape == tuple(images[0].shape[-2:])
    assert set(np.unique(ids)) - {0} == {s.id for s in result.segments}
    things = [s for s in result.segments if s.isthing]
    assert all(s.category_id in ds.meta.thing_ids for s in things)
    assert all(not ds.meta.isthing(s.category_id) for s in result.segments if not s.isthing)


def test_memory_embeddings_are_checkpointed_and_restored_exactly(synth_root, tmp_path):
    from panoptix.cli import main
    from panoptix.engine.build import load_model

    out = tmp_path / "run"
    assert main(["train", "--config", "ciae_tiny", *tiny_overrides(synth_root, out, solver__max_iter=3,
                                                                    engine__checkpoint_period=2)]) == 0
    final = safe_torch_load(last_checkpoint(out))["model"]
    assert int(final["loss.step"]) == 3
    model, *_ = load_model(last_checkpoint(out), device="cpu")
    assert torch.equal(model.loss.memory, final["loss.memory"]) and int(model.loss.step) == 3
    # Resume from iteration 2 to 3: the memory ends where the uninterrupted run's did.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "model_0000002.pth").write_bytes((out / "model_0000002.pth").read_bytes())
    (resumed / "last_checkpoint").write_text("model_0000002.pth")
    assert main(["train", "--config", "ciae_tiny", *tiny_overrides(synth_root, resumed, solver__max_iter=3,
                                                                    engine__checkpoint_period=2,
                                                                    engine__resume="true")]) == 0
    again = safe_torch_load(last_checkpoint(resumed))["model"]
    assert torch.equal(again["loss.memory"], final["loss.memory"]) and int(again["loss.step"]) == 3


def test_ablation_switches_change_the_model(synth_root):
    ds = PanopticDataset.synthetic(synth_root, "val")
    plain = _model(ds.meta, "model.embedding.coord_conv=false", "model.embedding.box_embedding=false",
                   "model.merge_things=false", "model.loss.filter_box_scale=null", "model.loss.margin=0.3",
                   "model.embedding.embed_dim=16", "model.loss.momentum=0.99")
    assert plain.embedding.box is None and plain.loss.memory.shape == (ds.meta.num_classes, 16)
    assert plain.loss.filter_box_scale is None and plain.loss.current_momentum() == 0.99
    first = plain.embedding.towers[3][0][0]
    assert first.in_channels == 64                                            # no coordinate channels
    assert _model(ds.meta).embedding.towers[3][0][0].in_channels == 66
    samples, images = image_batch(ds)
    losses = plain.train()(images, _targets(plain, samples))
    assert all(torch.isfinite(v) for v in losses.values())


def test_instance_category_from_the_embedding_reads_the_thing_memory(synth_root):
    ds = PanopticDataset.synthetic(synth_root, "val")
    with pytest.raises(ValueError, match="merge_things: false"):
        _model(ds.meta, "model.instance_category=embedding", "model.merge_things=true")
    model = _model(ds.meta, "model.instance_category=embedding", "model.merge_things=false")
    rows = model.thing_rows
    queries = model.loss.memory[[rows[3], rows[0]]]                          # exactly thing classes 3 and 0
    assert model.instance_labels(torch.tensor([5, 5]), queries).tolist() == [3, 0]


def test_total_iters_comes_from_the_solver(synth_root):
    ds = PanopticDataset.synthetic(synth_root, "val")
    assert _model(ds.meta, "solver.max_iter=1234").loss.total_iters == 1234


@pytest.mark.slow
@pytest.mark.parametrize("classifier", [(), ("model.classifier={name: roi_classifier, fc_dim: 32, roi_align: matmul}",
                                             "model.instance_category=classifier")], ids=["fcos", "roi_classifier"])
def test_onnx_export_matches_pytorch_segment_map(synth_root, tmp_path, classifier):
    pytest.importorskip("onnxruntime")
    from panoptix.engine.export import check_onnx, export_onnx, segments_from_outputs

    ds = PanopticDataset.synthetic(synth_root, "val")
    model = _model(ds.meta, "model.detector.score_thresh=0.0", *classifier).eval()
    _, images = image_batch(ds, 1)
    report = export_onnx(model, tmp_path / "ciae.onnx", tuple(images[0].shape[-2:]))
    assert (tmp_path / "ciae.onnx").stat().st_size > 0
    check = check_onnx(model, tmp_path / "ciae.onnx", image=images[0], repeat=1)
    assert check["equal"], (report, check)
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "ciae.onnx"), providers=["CPUExecutionProvider"])
    ids, cats, scores, areas = session.run(None, {"image": images[0].numpy()})
    result = model([images[0]])[0]
    segs = segments_from_outputs(ids, cats, scores, areas, ds.meta.thing_ids)
    assert [(s["id"], s["category_id"], s["area"]) for s in segs] == \
        [(s.id, s.category_id, s.area) for s in result.segments]


@pytest.mark.slow
def test_export_command_writes_a_checked_graph_and_refuses_a_refinement(synth_root, tmp_path, capsys, trained_tiny):
    pytest.importorskip("onnxruntime")
    import json

    from panoptix.cli import main

    out = tmp_path / "run"
    assert main(["train", "--config", "ciae_tiny", *tiny_overrides(synth_root, out, solver__max_iter=1)]) == 0
    onnx = tmp_path / "exp" / "ciae.onnx"
    assert main(["export", "--weights", str(last_checkpoint(out)), "--out", str(onnx), "--size", "64", "96",
                 "--repeat", "1", "model.detector.score_thresh=0.0"]) == 0
    report = json.loads(onnx.with_suffix(".json").read_text())
    assert report["size"] == [64, 96] and report["check"]["equal"] is True
    assert "segment maps equal on 100.0000% of pixels" in capsys.readouterr().out
    assert main(["export", "--weights", str(last_checkpoint(trained_tiny)), "--out", str(tmp_path / "x.onnx"),
                 "--size", "96", "96", "model.refine={name: crf}"]) == 2
    assert "model.refine (a Dense CRF) runs outside PyTorch and does not export" in capsys.readouterr().err


def test_export_format_must_match_the_output_file(tmp_path, capsys):
    from panoptix.cli import main

    assert main(["export", "--weights", str(tmp_path / "absent.pth"), "--format", "onnx", "--out",
                 str(tmp_path / "m.pt")]) == 2
    assert f"--out {tmp_path / 'm.pt'} does not end in .onnx (--format onnx)" in capsys.readouterr().err
    with pytest.raises(SystemExit):   # argparse: a format there is no exporter for
        main(["export", "--weights", "w.pth", "--format", "torchscript"])


def test_export_refuses_a_size_the_model_would_resize(synth_root):
    from panoptix.errors import ExportError
    from panoptix.models.systems.ciae_graph import CIAEGraph

    ds = PanopticDataset.synthetic(synth_root, "val")
    model = _model(ds.meta, "model.preprocess.min_size_test=96").eval()
    with pytest.raises(ExportError, match="export at --size 96 96"):
        CIAEGraph(model, (64, 64))
    assert CIAEGraph(model, (96, 96)).size == (96, 96)
