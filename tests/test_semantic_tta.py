"""Multi-scale + flip TTA of scene parsing systems (spec section 9)."""

import pytest
import torch
from torch import nn

from panoptix.data.synthetic import synthetic_meta
from panoptix.engine.semantic_tta import SemanticTTA, window_starts
from panoptix.models.preprocess import Preprocessor
from panoptix.models.systems.semantic import semantic_result

from conftest import seeded_model

META = synthetic_meta()


class PixelModel(nn.Module):
    """A per-pixel (1x1) classifier of the colour: equivariant to flips, and to windows."""

    task = "semantic"

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.preprocess = Preprocessor(min_size_test=0)
        self.conv = nn.Conv2d(3, META.num_classes, 1)
        self.categories = list(META.category_ids)

    def view_logits(self, view: torch.Tensor) -> torch.Tensor:
        return self.conv(view[None])[0]

    def result(self, logits: torch.Tensor):
        return semantic_result(logits.argmax(0), self.categories, META)


def test_window_starts_cover_the_side_and_end_flush():
    assert window_starts(10, 4, 2) == [0, 2, 4, 6]
    assert window_starts(4, 4, 2) == [0] and window_starts(3, 4, 2) == [0]
    assert window_starts(5, 4, 2) == [0, 1]


def test_flip_tta_of_a_flip_equivariant_model_equals_no_tta():
    model = PixelModel().eval()
    image = torch.rand(3, 20, 30)
    plain = torch.softmax(model.view_logits(image), 0)
    for tta in (SemanticTTA(model).eval(), SemanticTTA(model, flip=True).eval(),
                SemanticTTA(model, flip=True, crop_size=(8, 12)).eval()):
        torch.testing.assert_close(tta.probabilities(image), plain)
        assert torch.equal(tta([image])[0].extra["semantic"], plain.argmax(0))


def test_tta_refuses_training_mode():
    # in training mode BatchNorm would normalise each view by its own statistics: a different prediction
    with pytest.raises(RuntimeError, match="SemanticTTA is for inference: call .eval"):
        SemanticTTA(PixelModel()).probabilities(torch.rand(3, 8, 8))


def test_tta_of_a_scene_parser_at_one_scale_is_the_parser():
    model = seeded_model(META, "ainnoseg_tiny").eval()
    images = [torch.rand(3, 64, 80)]
    with torch.no_grad():
        plain = model(images)[0].extra["semantic"]
        assert torch.equal(SemanticTTA(model).eval()(images)[0].extra["semantic"], plain)
        multi = SemanticTTA(model, scales=(0.5, 1.0, 1.5), flip=True).eval()(images)[0]
    assert multi.extra["semantic"].shape == (64, 80)


def test_semantic_tta_refuses_panoptic_systems_and_bad_scales():
    panoptic = seeded_model(META, "panoptic_fpn_tiny")
    with pytest.raises(ValueError, match="not a scene parsing system"):
        SemanticTTA(panoptic)
    with pytest.raises(ValueError, match="scales"):
        SemanticTTA(PixelModel(), scales=(0.0,))
