"""Panoptic TTA and weighted ensembles: a flip-equivariant model gives the same panoptic result with
and without flip TTA; one model at scale 1 reproduces its own output; weights average the
semantic probabilities; box voting and the option parsers on known inputs; the CLI."""

from __future__ import annotations

import functools
import json
import shutil

import pytest
import torch
from torch import nn
from torchvision.ops import roi_align

from panoptix.cli import main
from panoptix.data.datasets import PanopticDataset
from panoptix.data.meta import DatasetMeta
from panoptix.engine.ensemble import EnsembleError, PanopticEnsemble, TTASettings, parse_ensemble, vote_boxes
from panoptix.fusion.heuristic import heuristic_fusion, semantic_category_table
from panoptix.models.preprocess import Preprocessor
from panoptix.structures import Instances

from conftest import image_batch, seeded_model

META = DatasetMeta.from_categories([{"id": 1, "name": "blob", "isthing": 1}, {"id": 2, "name": "sky", "isthing": 0},
                                    {"id": 3, "name": "sea", "isthing": 0}])


class FlipEquivariantHead(nn.Module):
    """Detects the bounding box of channel 2 > 0.5 (score 0.9, class 0); its masks are channel 2
    RoIAligned (aligned=True: exactly mirror-symmetric)."""

    nms_thresh, detections_per_img = 0.5, 10

    def detect_boxes(self, images, feats):
        x = images.tensors[0, 2]
        h, w = images.image_sizes[0]
        ys, xs = torch.nonzero(x[:h, :w] > 0.5, as_tuple=True)
        box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()[None]
        return [Instances(box, torch.tensor([0.9]), torch.tensor([0]), None, image_size=(h, w))]

    def mask_logits_for_boxes(self, images, feats, boxes, labels):
        m = roi_align(images.tensors[:, 2:3], boxes, 28, 1.0, 2, aligned=True)[:, 0]
        return [(m - 0.5) * 20]


class StubSystem(nn.Module):
    """A two-stage-shaped system whose every output is a flip-equivariant function of the pixels:
    semantic logits from the channels 0 and 1, 2x2 mean-pooled (things channel = channel 2)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.preprocess = Preprocessor((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), min_size_test=0, size_divisibility=4)
        self.backbone = self.neck = nn.Identity()
        self.instance_head = FlipEquivariantHead()
        self.meta = META
        self.semantic_categories = semantic_category_table(META, "all")
        self.thing_categories = list(META.thing_ids)
        self.fusion = functools.partial(heuristic_fusion, stuff_min_area=0)
        self.min_instance_score = 0.0
        self.scale = scale

    def semantic_outputs(self, x):
        logits = torch.cat([x[:, 2:3], x[:, 0:1], x[:, 1:2]], 1) * 10 * self.scale
        return torch.nn.functional.avg_pool2d(logits, 4), {}, {}

    def fuse(self, raw):
        return self.fusion(raw.instances, raw.semantic_logits, self.semantic_categories, self.thing_categories)


def _picture():
    torch.manual_seed(0)
    image = torch.zeros(3, 32, 48)
    image[0, :16] = 1.0                        # sky above
    image[1, 16:] = 1.0                        # sea below
    image[2, 10:22, 5:17] = 1.0                # an off-centre blob
    image[:2] += 0.05 * torch.rand(2, 32, 48)
    return image.clamp(0, 1)                   # the input contract: floats in 0..1


def test_flip_tta_of_a_flip_equivariant_model_equals_no_tta():
    image = _picture()
    plain = PanopticEnsemble([StubSystem()]).eval()([image])[0]
    flipped = PanopticEnsemble([StubSystem()], tta=TTASettings(flip=True)).eval()([image])[0]
    assert [(s.category_id, s.area) for s in plain.segments] == [(s.category_id, s.area) for s in flipped.segments]
    assert torch.equal(plain.ids, flipped.ids)
    blob = [s for s in plain.segments if s.isthing]
    assert len(blob) == 1 and blob[0].area == 12 * 12


def test_weights_average_the_semantic_probabilities():
    image = _picture()
    models = [StubSystem(1.0), StubSystem(-1.0)]
    ens = PanopticEnsemble(models, [3.0, 1.0])
    views = ens.views(image)
    probs = ens.semantic_map(views, (32, 48)).exp()  # the heuristic merge gets the log of the mean softmax
    single = [PanopticEnsemble([m]).semantic_map(PanopticEnsemble([m]).views(image), (32, 48)).exp()
              for m in models]
    assert torch.allclose(probs, (3 * single[0] + single[1]) / 4, atol=1e-6)


def test_upsnet_merges_get_averaged_logits_and_others_log_mean_probabilities():
    from functools import partial

    from panoptix.fusion.average import average_semantic, reads_logits
    from panoptix.fusion.heuristic import heuristic_fusion
    from panoptix.fusion.upsnet import upsnet_fusion

    assert reads_logits(partial(upsnet_fusion, score_thresh=0.3)) and not reads_logits(heuristic_fusion)
    a, b = torch.tensor([[[2.0]], [[0.0]]]), torch.tensor([[[0.0]], [[4.0]]])  # (K=2, 1, 1)
    torch.testing.assert_close(average_semantic([a, b], [3.0, 1.0], logits=True), torch.tensor([[[1.5]], [[1.0]]]))
    mean = (3 * a.softmax(0) + b.softmax(0)) / 4
    torch.testing.assert_close(average_semantic([a, b], [3.0, 1.0]), mean.log())


def test_box_voting_on_known_boxes():
    pooled = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0], [0.0, 0.0, 10.0, 10.0],
                           [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([0.9, 0.3, 0.8, 0.7])
    labels = torch.tensor([0, 0, 1, 0])
    voted, mean = vote_boxes(pooled[:1], labels[:1], pooled, scores, labels)
    # same class, IoU >= 0.5: boxes 0 and 1 (box 2 is another class, box 3 far away)
    assert voted[0].tolist() == pytest.approx([0.5, 0.0, 10.5, 10.0])
    assert mean.item() == pytest.approx(0.6)


def test_parsers_and_refusals():
    assert TTASettings.parse("scales=0.75,1,1.25 flip") == TTASettings((0.75, 1.0, 1.25), True)
    assert TTASettings.parse("") == TTASettings()
    with pytest.raises(EnsembleError, match="unknown item 'mirror'"):
        TTASettings.parse("mirror")
    with pytest.raises(EnsembleError, match="positive"):
        TTASettings.parse("scales=0,1")
    assert parse_ensemble("a.pth:0.4,runs/b.pth:1.2,c.pth") == [("a.pth", 0.4), ("runs/b.pth", 1.2), ("c.pth", 1.0)]
    with pytest.raises(EnsembleError, match="positive"):
        parse_ensemble("a.pth:-1")
    with pytest.raises(EnsembleError, match="two-stage"):
        PanopticEnsemble([nn.Linear(1, 1)])


def test_one_model_at_scale_one_reproduces_the_model(synth_root):
    ds = PanopticDataset.synthetic(synth_root, "val")
    model = seeded_model(ds.meta, "panoptic_fpn_tiny", "model.instance_head.box_score_thresh=0.0").eval()
    _, images = image_batch(ds, 2)
    with torch.no_grad():
        own = model(images)
    ens = PanopticEnsemble([model]).eval()(images)
    for a, b in zip(own, ens):
        assert torch.equal(a.ids, b.ids)
        assert [(s.category_id, s.area) for s in a.segments] == [(s.category_id, s.area) for s in b.segments]
    with pytest.raises(EnsembleError, match="ranking"):
        PanopticEnsemble([seeded_model(ds.meta, "upsnet_srm_tiny", "model.fusion.name=ranking")])


@pytest.mark.slow
def test_predict_with_tta_and_an_ensemble(trained_tiny, synth_val, tmp_path):
    ckpt = sorted(trained_tiny.glob("model_*.pth"))[-1]
    images = tmp_path / "images"
    images.mkdir()
    for f in sorted(synth_val["image_dir"].iterdir())[:3]:
        shutil.copy(f, images / f.name)
    pred = tmp_path / "pred"
    assert main(["predict", "--ensemble", f"{ckpt}:0.4,{ckpt}:1.2", "--tta", "scales=0.75,1 flip", "--box-voting",
                 "--input", str(images), "--output", str(pred), "--no-overlays"]) == 0
    summary = json.loads((pred / "predict_summary.json").read_text())
    assert summary["tta"] == "scales=0.75,1 flip" and summary["ensemble"] and summary["images"] == 3
    record = json.loads((pred / "panoptic_pred.json").read_text())
    assert len(record["annotations"]) == 3 and all(a["segments_info"] for a in record["annotations"])
