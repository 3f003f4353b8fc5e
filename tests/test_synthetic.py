import contextlib
import io
import json

import numpy as np
import pytest
from panopticapi.evaluation import pq_compute

from panoptix.data.datasets import PanopticDataset
from panoptix.data.synthetic import SynthConfig, render_scene, synthetic_meta, write_synthetic


def test_categories():
    meta = synthetic_meta()
    assert meta.num_things >= 6 and meta.num_stuff >= 4


def test_deterministic_per_seed():
    a = render_scene(np.random.default_rng([3, 1, 5]), SynthConfig(size=64))
    b = render_scene(np.random.default_rng([3, 1, 5]), SynthConfig(size=64))
    c = render_scene(np.random.default_rng([4, 1, 5]), SynthConfig(size=64))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    assert not np.array_equal(a[1], c[1])


def test_written_set_is_deterministic_and_valid(tmp_path, synth_root):
    write_synthetic(tmp_path, {"train": 6}, seed=7, cfg=SynthConfig(size=96), workers=2, progress=False)
    a = json.loads((tmp_path / "annotations/panoptic_train.json").read_text())
    b = json.loads((synth_root / "annotations/panoptic_train.json").read_text())
    assert a == b
    assert (tmp_path / "annotations/panoptic_train/000003.png").read_bytes() == \
        (synth_root / "annotations/panoptic_train/000003.png").read_bytes()
    ds = PanopticDataset.synthetic(synth_root, "val")    # full validation of every sample
    for s in ds:
        assert s.image.shape == (96, 96, 3)


def test_content_statistics(synth_root):
    ds = PanopticDataset.synthetic(synth_root, "val", load_images=False)
    meta = ds.meta
    thing_extents, crowd, void, stuff_classes, thing_classes = [], 0, 0, set(), set()
    for s in ds:
        void += int((s.ids == 0).sum() > 0)
        for seg in s.segments:
            if seg.iscrowd:
                crowd += 1
            elif meta.isthing(seg.category_id):
                thing_extents.append(max(seg.bbox[2], seg.bbox[3]))
                thing_classes.add(seg.category_id)
            else:
                stuff_classes.add(seg.category_id)
    assert crowd >= 1 and void >= 3
    assert len(stuff_classes) == 4 and len(thing_classes) == 6
    assert min(thing_extents) <= 12 and max(thing_extents) >= 40   # ~8 px to half of 96 px


def test_colour_does_not_identify_a_class(synth_root):
    """The mean colour of instances of one class spreads widely (texture/colour vary in a class)."""
    ds = PanopticDataset.synthetic(synth_root, "val")
    per_class: dict[int, list] = {}
    for s in ds:
        for seg in s.segments:
            if ds.meta.isthing(seg.category_id) and not seg.iscrowd:
                per_class.setdefault(seg.category_id, []).append(s.image[s.ids == seg.id].mean(0))
    spreads = [np.std(np.array(v), axis=0).mean() for v in per_class.values() if len(v) >= 4]
    assert spreads and min(spreads) > 25


def test_heavy_mode_puts_rare_small_things_on_frequent_large_ones(heavy_root):
    ds = PanopticDataset.synthetic(heavy_root, "val", load_images=False)
    rare, frequent = {5, 6}, {1, 2}
    pairs = 0
    for s in ds:
        for small in s.segments:
            if small.category_id not in rare:
                continue
            x, y, w, h = small.bbox
            ring = np.zeros_like(s.ids, bool)
            ring[max(y - 2, 0):y + h + 2, max(x - 2, 0):x + w + 2] = True
            around = np.unique(s.ids[ring & (s.ids != small.id)])
            big = [g for g in s.segments if g.id in around and g.category_id in frequent and g.area > 3 * small.area]
            pairs += bool(big)
    assert pairs >= 10


def test_panopticapi_accepts_the_ground_truth(synth_val):
    with contextlib.redirect_stdout(io.StringIO()):
        r = pq_compute(str(synth_val["gt_json"]), str(synth_val["gt_json"]), str(synth_val["gt_dir"]),
                       str(synth_val["gt_dir"]))
    assert r["All"]["pq"] == 1.0 and r["All"]["n"] == 10


def test_bad_config():
    with pytest.raises(ValueError, match="occlusion"):
        SynthConfig(occlusion="extreme")
    with pytest.raises(ValueError, match="32 px"):
        SynthConfig(size=16)
