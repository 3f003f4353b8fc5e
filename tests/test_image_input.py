"""The one input contract: uint8 (H, W, 3) arrays, (3, H, W) uint8 tensors and float arrays or tensors
in 0..1 give the same result through `Predictor` and ``model(images)``; anything else is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from panoptix.data.datasets import PanopticDataset
from panoptix.engine.predictor import Predictor
from panoptix.image_input import ImageInputError, as_image_tensors

from conftest import seeded_model


@pytest.fixture(scope="module")
def model_and_image(synth_root):
    ds = PanopticDataset.synthetic(synth_root, "val")
    model = seeded_model(ds.meta, "panoptic_fpn_tiny", "model.instance_head.box_score_thresh=0.0").eval()
    return model, ds[0].image


def _forms(image: np.ndarray) -> dict[str, object]:
    unit = image.astype(np.float32) / 255
    return {"uint8 array": image, "uint8 tensor": torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous(),
            "float array": unit, "float64 array": unit.astype(np.float64),
            "float tensor": torch.from_numpy(unit).permute(2, 0, 1).contiguous()}


def test_every_form_gives_the_same_tensor():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    tensors = as_image_tensors(list(_forms(image).values()))
    assert all(t.shape == (3, 5, 7) and t.dtype == torch.float32 for t in tensors)
    assert all(torch.allclose(t, tensors[0], atol=1e-6) for t in tensors)
    assert tensors[0][0, 0, 0].item() == pytest.approx(image[0, 0, 0] / 255)


def test_predictor_and_model_give_the_same_segment_map_for_every_form(model_and_image):
    model, image = model_and_image
    predictor = Predictor(model, "cpu", batch_size=2)
    reference = predictor([image])[0]
    assert len(reference.segments) > 0
    for name, form in _forms(image).items():
        for result in (predictor([form])[0], model([form])[0]):
            assert torch.equal(result.ids, reference.ids), name
            assert [(s.category_id, s.area) for s in result.segments] == \
                [(s.category_id, s.area) for s in reference.segments], name


@pytest.mark.parametrize("bad, match", [
    (np.full((8, 8, 3), 200.0, np.float32), r"image 0: float values span 200..200, which looks like 0\.\.255"),
    (torch.full((3, 8, 8), -1.5), r"which looks normalised"),
    (np.zeros((3, 8, 8), np.uint8), r"channels-first array"),
    (torch.zeros(8, 8, 3), r"channels-last tensor"),
    (np.zeros((8, 8, 3), np.int32), r"dtype int32"),
    (np.zeros((8, 8), np.uint8), r"array of shape \(8, 8\)"),
])
def test_images_outside_the_contract_are_refused_with_one_line(model_and_image, bad, match):
    model, _ = model_and_image
    for run in (lambda: Predictor(model, "cpu")([bad]), lambda: model([bad])):
        with pytest.raises(ImageInputError, match=match) as err:
            run()
        assert "\n" not in str(err.value)


def test_floats_just_above_one_are_rounding_and_accepted():
    assert as_image_tensors([torch.full((3, 2, 2), 1.005)])[0].max().item() == pytest.approx(1.005)
    with pytest.raises(ImageInputError, match="1.02"):
        as_image_tensors([torch.full((3, 2, 2), 1.02)])
