import json

import numpy as np
import pytest
from PIL import Image

from panoptix.data import DatasetMeta, PanopticFormatError
from panoptix.data.datasets import PanopticDataset
from panoptix.data.formats import load_ade20k, load_coco_panoptic, read_sample, write_coco_panoptic
from panoptix.data.png import write_id_png

CATS = [{"id": 1, "name": "thing", "isthing": 1, "color": [200, 0, 0]},
        {"id": 9, "name": "stuff", "isthing": 0, "color": [0, 0, 200]}]


def _dataset(tmp_path, segments, ids, image_size=None, file_name="a.png", image_name="a.jpg"):
    """A one-image COCO panoptic dataset; returns (json path, png dir, image dir)."""
    png_dir, img_dir = tmp_path / "pan", tmp_path / "img"
    png_dir.mkdir(exist_ok=True)
    img_dir.mkdir(exist_ok=True)
    write_id_png(png_dir / "a.png", ids)
    h, w = image_size or ids.shape
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(img_dir / "a.jpg")
    data = {"images": [{"id": 1, "file_name": image_name, "height": ids.shape[0], "width": ids.shape[1]}],
            "annotations": [{"image_id": 1, "file_name": file_name, "segments_info": segments}],
            "categories": CATS}
    (tmp_path / "pan.json").write_text(json.dumps(data))
    return tmp_path / "pan.json", png_dir, img_dir


IDS = np.array([[0, 3, 3], [4, 4, 3]], dtype=np.int32)
SEGS = [{"id": 3, "category_id": 1, "iscrowd": 0, "area": 3}, {"id": 4, "category_id": 9, "iscrowd": 0, "area": 2}]


def test_write_then_read_round_trip(tmp_path):
    meta = DatasetMeta.from_categories(CATS)
    write_coco_panoptic(tmp_path / "out.json", tmp_path / "out", meta, [(1, "a.png", IDS, SEGS)])
    meta2, records = load_coco_panoptic(tmp_path / "out.json")
    sample = read_sample(records[0], meta2)
    np.testing.assert_array_equal(sample.ids, IDS)
    assert [(s.id, s.category_id, s.area) for s in sample.segments] == [(3, 1, 3), (4, 9, 2)]
    assert meta2.to_json() == meta.to_json()


def test_a_valid_dataset_loads_with_images(tmp_path):
    ds = PanopticDataset.coco(*_dataset(tmp_path, SEGS, IDS))
    s = ds[0]
    assert s.image.shape == (2, 3, 3) and s.image.dtype == np.uint8
    np.testing.assert_array_equal(s.category_map(), [[-1, 1, 1], [9, 9, 1]])


@pytest.mark.parametrize("segments, match", [
    (SEGS + [{"id": 5, "category_id": 1}], r"\[5\] are in the JSON but not in the PNG"),
    (SEGS[:1], r"PNG id\(s\) \[4\] have no segment in the JSON"),
    ([SEGS[0], {"id": 4, "category_id": 77}], "segment 4 has unknown category_id 77"),
    (SEGS + [{"id": 3, "category_id": 9}], "segment id 3 appears twice"),
    ([{"id": 3}], "lacks 'id' or 'category_id'"),
])
def test_segment_errors_name_file_and_segment(tmp_path, segments, match):
    def load():
        ds = PanopticDataset.coco(*_dataset(tmp_path, segments, IDS))
        return ds[0]
    with pytest.raises(PanopticFormatError, match=match) as err:
        load()
    assert "pan.json" in str(err.value) or "a.png" in str(err.value)


def test_size_mismatch_between_image_and_annotation(tmp_path):
    ds = PanopticDataset.coco(*_dataset(tmp_path, SEGS, IDS, image_size=(5, 5)))
    with pytest.raises(PanopticFormatError, match="a.jpg is 5x5 but its annotation is 3x2"):
        ds[0]


def test_missing_files_and_escaping_names(tmp_path):
    gt_json, png_dir, img_dir = _dataset(tmp_path, SEGS, IDS)
    (img_dir / "a.jpg").unlink()
    with pytest.raises(PanopticFormatError, match="a.jpg not found"):
        load_coco_panoptic(gt_json, png_dir, img_dir)
    (png_dir / "a.png").unlink()
    with pytest.raises(PanopticFormatError, match="a.png not found"):
        load_coco_panoptic(gt_json, png_dir)
    with pytest.raises(PanopticFormatError, match="PNG folder not found"):
        load_coco_panoptic(gt_json, tmp_path / "nowhere")
    gt_json, png_dir, _ = _dataset(tmp_path, SEGS, IDS, file_name="../pan.json")
    with pytest.raises(PanopticFormatError, match="escapes the dataset folder"):
        load_coco_panoptic(gt_json, png_dir)
    gt_json, png_dir, img_dir = _dataset(tmp_path, SEGS, IDS, image_name="/etc/passwd")
    with pytest.raises(PanopticFormatError, match="escapes"):
        load_coco_panoptic(gt_json, png_dir, img_dir)


def test_malformed_json(tmp_path):
    (tmp_path / "x.json").write_text('{"annotations": [')
    (tmp_path / "x").mkdir()
    with pytest.raises(PanopticFormatError, match="malformed JSON"):
        load_coco_panoptic(tmp_path / "x.json")
    (tmp_path / "x.json").write_text('{"images": []}')
    with pytest.raises(PanopticFormatError, match="'annotations' list"):
        load_coco_panoptic(tmp_path / "x.json")


def test_ade20k_layout(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    for d in ("images/validation", "annotations/validation"):
        (root / d).mkdir(parents=True)
    label = np.array([[0, 1, 1], [150, 150, 1]], np.uint8)
    Image.fromarray(label).save(root / "annotations/validation/ADE_val_00000001.png")
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(root / "images/validation/ADE_val_00000001.jpg")
    meta, records = load_ade20k(root, "validation")
    assert meta.num_classes == 150 and meta.num_things == 0
    s = read_sample(records[0], meta)
    np.testing.assert_array_equal(s.category_map(), [[-1, 1, 1], [150, 150, 1]])
    assert sorted((x.category_id, x.area) for x in s.segments) == [(1, 3), (150, 2)]
    (root / "images/validation/ADE_val_00000001.jpg").unlink()
    with pytest.raises(PanopticFormatError, match="ADE_val_00000001.jpg not found"):
        load_ade20k(root, "validation")
