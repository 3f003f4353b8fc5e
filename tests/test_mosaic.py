"""Mosaic (spec section 8) and the multi-scale / crop training transform."""

import numpy as np
import pytest

from panoptix.data.sample import PanopticSample, Segment
from panoptix.data.synthetic import synthetic_meta
from panoptix.data.targets import build_semantic_target
from panoptix.data.transforms import TrainTransform, mosaic

META = synthetic_meta()  # things 1..6, stuff 11..14; contiguous: things 0..5, stuff 6..9


def _tile(k: int, h: int = 4, w: int = 6, big_id: int = 5000) -> PanopticSample:
    """Column 0 is thing k + 1 (segment id 7, the same in every tile), the rest stuff 11 + k (a large id)."""
    ids = np.full((h, w), big_id + k, dtype=np.int32)
    ids[:, 0] = 7
    image = np.full((h, w, 3), 10 * (k + 1), dtype=np.uint8)
    return PanopticSample(ids, [Segment(7, k + 1), Segment(big_id + k, 11 + k)], image, image_id=f"tile{k}")


def test_mosaic_keeps_each_kept_pixel_at_its_class_and_fills_the_rest_with_ignore():
    # Quadrant 4x6, canvas 8x12, images meet at (cx, cy) = (5, 3); every tile is 4x6 (scale 1):
    # top-left lands on rows 0-2, cols 0-4 from its window cols 1-5 (its thing column is cut away);
    # top-right rows 0-2, cols 5-10 from cols 0-5 (thing at canvas col 5); bottom-left rows 3-6,
    # cols 0-4 from cols 1-5; bottom-right rows 3-6, cols 5-10 (thing at col 5). Row 7 and col 11: none.
    out = mosaic([_tile(k) for k in range(4)], (4, 6), (5, 3))
    sem = build_semantic_target(out, META)["semantic"].numpy()
    stuff = [6, 7, 8, 9]  # contiguous ids of stuff 11..14
    expected = np.full((8, 12), 255)
    expected[0:3, 0:5] = stuff[0]
    expected[0:3, 5:11] = stuff[1]
    expected[0:3, 5] = 1  # thing 2 of tile 1
    expected[3:7, 0:5] = stuff[2]
    expected[3:7, 5:11] = stuff[3]
    expected[3:7, 5] = 3  # thing 4 of tile 3
    np.testing.assert_array_equal(sem, expected)
    assert out.image.shape == (8, 12, 3)
    assert (out.image[7] == 0).all() and (out.image[:, 11] == 0).all()  # pad value
    assert out.image[0, 0, 0] == 10 and out.image[6, 10, 0] == 40
    # ids renumbered per tile, so the two things that share id 7 in their tiles stay two segments;
    # the things cut away entirely are gone
    things = [s for s in out.segments if META.isthing(s.category_id)]
    assert sorted(s.category_id for s in things) == [2, 4]
    assert len({s.id for s in out.segments}) == len(out.segments) == 6
    assert {s.id: s.area for s in things} == {s.id: int((out.ids == s.id).sum()) for s in things} and \
        sorted(s.area for s in things) == [3, 4]


def test_mosaic_resizes_keeping_the_ratio_with_nearest_labels():
    big = [_tile(k, h=8, w=12) for k in range(4)]  # scaled by min(4/8, 6/12) = 0.5 to 4x6
    out = mosaic(big, (4, 6), (6, 4))  # the centre of the canvas: every tile lands whole
    sem = build_semantic_target(out, META)["semantic"].numpy()
    assert (sem != 255).all()
    # nearest resize 12 -> 6 columns keeps source columns 1, 3, ..., so the thing column (0) goes
    assert set(np.unique(sem[:4, :6])) == {6} and set(np.unique(sem[4:, 6:])) == {9}
    with pytest.raises(ValueError, match="4 samples"):
        mosaic(big[:3], (4, 6), (6, 4))


def test_transform_mosaic_is_replayable_and_crop_and_ratio_apply():
    pool = [_tile(k, h=32, w=48) for k in range(4)]

    def pick(rng):
        return pool[int(rng.integers(len(pool)))]

    t = TrainTransform(min_sizes=(32,), max_size=1000, flip=0.0, mosaic=1.0)
    a = t(pool[0], np.random.default_rng([0, 5]), pick)
    b = t(pool[0], np.random.default_rng([0, 5]), pick)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert a.ids.shape == (32, 48)  # the 64x96 canvas resized back to short side 32
    assert (a.ids == 0).any()  # the centre drawn for this seed is off the middle: some canvas is uncovered
    with pytest.raises(ValueError, match="pick"):
        t(pool[0], np.random.default_rng(0))
    crop = TrainTransform(min_sizes=(32,), max_size=1000, flip=0.0, scale_range=(2.0, 2.0), crop_size=(20, 30))
    c = crop(pool[1], np.random.default_rng(1))
    assert c.ids.shape == (20, 30) and c.image.shape == (20, 30, 3)
    with pytest.raises(ValueError, match="scale_range"):
        TrainTransform(scale_range=(2.0, 1.0))
