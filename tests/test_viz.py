import numpy as np

from panoptix.data import Category, DatasetMeta, Segment
from panoptix.viz import annotate, boundaries, colorize, overlay, side_by_side

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
    void = np.zeros((8, 8), np.int32)
    hatched = overlay(np.full((8, 8, 3), 50, np.uint8), void, [], META)
    assert (hatched == 0).all(-1).mean() == 0.25 and ((hatched == 0) | (hatched == 50)).all()  # VOID: hatched
    big = np.kron(IDS, np.ones((20, 20), np.int32))
    pair = side_by_side(None, (big, SEGS), (big, SEGS[:2]), META, labels=True)
    assert pair.shape == (60 + 14, 2 * 80 + 4, 3)
    plain = side_by_side(None, (big, SEGS), (big, SEGS[:2]), META)
    assert (pair != plain).any()                  # labels were drawn


def test_annotate_scales_and_adds_a_legend_of_the_categories_present():
    img = np.full((3, 4, 3), 50, np.uint8)
    out = annotate(img, IDS, SEGS, META, scale=20)
    assert out.shape[1] == 80 and out.shape[0] > 60                # 20x upscale, legend strip below
    small = overlay(img, IDS, SEGS, META)
    assert (out[10, 10] == small[0, 0]).all() and (out[50, 10] == small[2, 0]).all()  # cells keep their colour
    legend = out[60:]
    assert (legend == (200, 0, 0)).all(-1).any() and (legend == (0, 0, 200)).all(-1).any()   # both swatches
    only_disc = annotate(img, IDS, SEGS[:2], META, scale=20)[60:]
    assert not (only_disc == (0, 0, 200)).all(-1).any()            # sky is not in it: no swatch
