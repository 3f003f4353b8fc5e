"""Training transforms: resize with exact ids, flips, dropped segments, replayable randomness."""

from __future__ import annotations

import numpy as np

from panoptix.data.datasets import PanopticDataset
from panoptix.data.sample import PanopticSample, Segment
from panoptix.data.transforms import TrainTransform, hflip, resize, resized_shape


def _sample():
    ids = np.zeros((8, 8), np.int32)
    ids[:4] = 5
    ids[4:] = 7
    ids[0, 0] = 9  # one pixel: vanishes when halved
    segs = [Segment(5, 1, False, (0, 0, 8, 4), 31), Segment(7, 11, False, (0, 4, 8, 4), 32),
            Segment(9, 2, False, (0, 0, 1, 1), 1)]
    image = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    return PanopticSample(ids, segs, image)


def test_resized_shape():
    assert resized_shape(480, 640, 800, 1333) == (800, 1067)
    assert resized_shape(100, 1000, 800, 1333) == (133, 1333)


def test_resize_drops_vanished_segments_and_remeasures():
    s = resize(_sample(), 4, 4)
    assert s.ids.shape == (4, 4) and s.image.shape == (4, 4, 3)
    assert set(np.unique(s.ids)) == {5, 7}
    assert [(g.id, g.area, g.bbox) for g in s.segments] == [(5, 8, (0, 0, 4, 2)), (7, 8, (0, 2, 4, 2))]


def test_hflip():
    s = _sample()
    f = hflip(s)
    assert np.array_equal(f.ids, s.ids[:, ::-1]) and np.array_equal(f.image, s.image[:, ::-1])
    assert [g.bbox for g in f.segments if g.id == 9] == [(7, 0, 1, 1)]


def test_train_transform_is_replayable(synth_root):
    ds = PanopticDataset.synthetic(synth_root, "train")
    t = TrainTransform((48, 64, 80), max_size=200, flip=0.5)
    outs = [t(ds[0], np.random.default_rng([0, k])) for k in range(12)]
    again = [t(ds[0], np.random.default_rng([0, k])) for k in range(12)]
    assert all(np.array_equal(a.ids, b.ids) and np.array_equal(a.image, b.image) for a, b in zip(outs, again))
    assert {min(o.ids.shape) for o in outs} == {48, 64, 80}
