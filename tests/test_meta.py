import json

import numpy as np
import pytest

from panoptix.data import Category, DatasetMeta, PanopticFormatError


def test_coco_categories_drive_the_maps(coco_sample):
    meta = DatasetMeta.from_json(coco_sample["categories"])
    assert (meta.num_classes, meta.num_things, meta.num_stuff) == (133, 80, 53)
    # contiguous maps are dense and ordered as the catalogue
    assert sorted(meta.contiguous_id.values()) == list(range(133))
    assert sorted(meta.thing_contiguous_id.values()) == list(range(80))
    assert meta.stuff_contiguous_id[meta.stuff_ids[0]] == 0
    assert meta.by_id[1].name == "person" and meta.isthing(1)


def test_non_contiguous_ids_and_lookup_table():
    meta = DatasetMeta([Category(7, "a", True, (1, 2, 3)), Category(3, "b", False, (4, 5, 6)),
                        Category(40, "c", True, (7, 8, 9))])
    assert meta.thing_contiguous_id == {7: 0, 40: 1}
    assert meta.stuff_contiguous_id == {3: 0}
    lut = meta.lookup_table(meta.contiguous_id)
    np.testing.assert_array_equal(lut[np.array([7, 3, 40, 5])], [0, 1, 2, 255])


@pytest.mark.parametrize("cats, match", [
    ([{"id": 1, "name": "a", "isthing": 1}, {"id": 1, "name": "b", "isthing": 0}], "appears twice"),
    ([{"id": 1, "name": "a"}], "lacks field"),
    ([{"id": 1, "name": "a", "isthing": 2}], "isthing"),
    ([], "empty"),
])
def test_bad_categories_are_refused(cats, match):
    with pytest.raises(PanopticFormatError, match=match):
        DatasetMeta.from_categories(cats)


def test_from_json_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PanopticFormatError, match="malformed JSON"):
        DatasetMeta.from_json(bad)
    with pytest.raises(PanopticFormatError, match="not found"):
        DatasetMeta.from_json(tmp_path / "missing.json")
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"categories": [{"id": 5, "name": "x", "isthing": 0}]}))
    meta = DatasetMeta.from_json(ok)
    assert meta.stuff_ids == (5,) and len(meta.by_id[5].color) == 3
