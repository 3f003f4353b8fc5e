import numpy as np

from panoptix.data import Category, DatasetMeta, Segment
from panoptix.viz import boundaries, colorize, overlay, side_by_side

META = DatasetMeta([Category(1, "disc", True, (200, 0, 0)), Category(2, "sky", False, (0, 0, 200))])
IDS = np.array([[5, 5, 7, 7], [5, 5, 7, 7], [9, 9, 9, 0]], dtype=np.int32)
SEGS = [Segment(5, 1), Segment(7, 1), Segment(9, 2)]


def test_stuff_in_category_colour_and_instances_in_distinct_shades():
    c = colorize(IDS, SEGS, META)
    assert tuple(c[2, 0]) == (0, 0, 200)          # stuff: its colour
    assert tuple(c[0, 0]) == (200, 0, 0)          # first instance: the category colour
    assert tuple(c[0, 2]) != (200, 0, 0)          # second instance: another shade
    assert np.abs(c[0, 2].astype(int) - (200, 0, 0)).max() <= 60
    assert tuple(c[2, 3]) == (0, 0, 0)            # VOID


def test_overlay_boundaries_and_labels():
    img = np.full((3, 4, 3), 50, np.uint8)
    edge = boundaries(IDS)
    assert edge[0, 1] and not edge[0, 0]
    out = overlay(img, IDS, SEGS, META)
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    assert (out[edge] == 255).all()
    assert tuple(out[2, 3]) == (50, 50, 50)       # VOID shows the image untouched
    big = np.kron(IDS, np.ones((20, 20), np.int32))
    pair = side_by_side(None, (big, SEGS), (big, SEGS[:2]), META, labels=True)
    assert pair.shape == (60 + 14, 2 * 80 + 4, 3)
    plain = side_by_side(None, (big, SEGS), (big, SEGS[:2]), META)
    assert (pair != plain).any()                  # labels were drawn
