"""Cityscapes panoptic as cityscapesscripts' own converter (createPanopticImgs) writes it."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic
from PIL import Image

from panoptix.data import PanopticFormatError
from panoptix.data.datasets import PanopticDataset

IMAGES = {"aachen": "aachen_000000_000019", "bremen": "bremen_000001_000019"}


def _instance_ids(seed: int) -> np.ndarray:
    """(24, 32) Cityscapes instanceIds: road (7) below, sky (23) above, two cars (26000, 26001),
    a person crowd (24), and unlabelled (0) and ego-vehicle (1) pixels the converter drops."""
    ids = np.full((24, 32), 23, np.uint16)
    ids[12:] = 7
    ids[14:20, 2 + seed:10 + seed] = 26000
    ids[14:20, 14:22] = 26001
    ids[4:8, 24:30] = 24
    ids[0, :4] = 0
    ids[23, :] = 1
    return ids


@pytest.fixture()
def cityscapes_root(tmp_path):
    root = tmp_path / "cityscapes"
    for seed, (city, image_id) in enumerate(IMAGES.items()):
        gt, left = root / "gtFine" / "val" / city, root / "leftImg8bit" / "val" / city
        gt.mkdir(parents=True)
        left.mkdir(parents=True)
        Image.fromarray(_instance_ids(seed)).save(gt / f"{image_id}_gtFine_instanceIds.png")
        picture = np.full((24, 32, 3), 40 * (seed + 1), np.uint8)
        Image.fromarray(picture).save(left / f"{image_id}_leftImg8bit.png")
    return root


def _convert(root, train_id: bool = False) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        convert2panoptic(str(root / "gtFine"), str(root / "gtFine"), train_id, ["val"])


def test_loads_the_official_converters_output(cityscapes_root):
    _convert(cityscapes_root)
    data = json.loads((cityscapes_root / "gtFine" / "cityscapes_panoptic_val.json").read_text())
    assert data["images"][0]["file_name"].endswith("_gtFine_leftImg8bit.png")    # the converter's naming
    ds = PanopticDataset.cityscapes(cityscapes_root, "val")
    assert [s.image_id for s in ds] == sorted(IMAGES.values())
    for seed, (city, image_id) in enumerate(sorted(IMAGES.items())):
        sample = ds[seed]
        assert sample.image.shape == (24, 32, 3) and int(sample.image[0, 0, 0]) == 40 * (seed + 1)
        assert sample.file_name == f"{image_id}_leftImg8bit.png"
        names = {c.id: c.name for c in ds.meta.categories}
        shown = sorted((names[s.category_id], s.iscrowd, s.area) for s in sample.segments)
        assert shown == [("car", 0, 48), ("car", 0, 48), ("person", 1, 24), ("road", 0, 11 * 32 - 48 - 48),
                         ("sky", 0, 12 * 32 - 4 - 24)]
        assert (sample.ids[23] == 0).all() and (sample.ids[0, :4] == 0).all()   # dropped labels are VOID


def test_the_train_id_variant_is_accepted(cityscapes_root):
    _convert(cityscapes_root, train_id=True)
    assert not (cityscapes_root / "gtFine" / "cityscapes_panoptic_val.json").exists()
    ds = PanopticDataset.cityscapes(cityscapes_root, "val")
    road = next(c for c in ds.meta.categories if c.name == "road")
    assert road.id == 0 and len(ds.meta.categories) == 19
    assert sum(s.category_id == 0 for s in ds[0].segments) == 1


def test_a_missing_json_names_the_converter(cityscapes_root):
    with pytest.raises(PanopticFormatError, match=r"csCreatePanopticImgs --dataset-folder .*--set-names val"):
        PanopticDataset.cityscapes(cityscapes_root, "val")
