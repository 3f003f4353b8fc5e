import numpy as np
import pytest
import torch

from panoptix.data import Category, DatasetMeta, PanopticSample, Segment
from panoptix.data.targets import build_targets, num_semantic_classes

META = DatasetMeta([Category(3, "person", True, (1, 1, 1)), Category(8, "sky", False, (2, 2, 2)),
                    Category(5, "car", True, (3, 3, 3)), Category(9, "road", False, (4, 4, 4))])
IDS = np.array([[0, 10, 10, 20],
                [30, 30, 10, 20],
                [40, 40, 40, 40]], dtype=np.int32)
SAMPLE = PanopticSample(IDS, [Segment(10, 3), Segment(20, 5), Segment(30, 5, iscrowd=True), Segment(40, 9)])


def test_stuff_things_variant():
    t = build_targets(SAMPLE, META, "stuff_things")
    # 0 = any thing, stuff 1..S in stuff order (sky=1, road=2); VOID = 255; the crowd car (id 30)
    # is "things" (0) as in detectron2, not ignored
    np.testing.assert_array_equal(t["semantic"], [[255, 0, 0, 0], [0, 0, 0, 0], [2, 2, 2, 2]])
    assert num_semantic_classes(META, "stuff_things") == 3


def test_all_classes_variant():
    t = build_targets(SAMPLE, META, "all")
    # the crowd car keeps its class (car = contiguous 2)
    np.testing.assert_array_equal(t["semantic"], [[255, 0, 0, 2], [2, 2, 0, 2], [3, 3, 3, 3]])
    assert num_semantic_classes(META, "all") == 4


def test_instances_and_crowd_are_separate():
    t = build_targets(SAMPLE, META)
    assert t["labels"].tolist() == [0, 1]                           # person, car (thing order)
    assert t["segment_ids"].tolist() == [10, 20]
    torch.testing.assert_close(t["boxes"], torch.tensor([[1., 0., 3., 2.], [3., 0., 4., 2.]]))
    assert t["masks"].shape == (2, 3, 4) and t["masks"][0].sum() == 3
    assert t["crowd_labels"].tolist() == [1] and t["crowd_masks"][0].sum() == 2
    torch.testing.assert_close(t["crowd_boxes"], torch.tensor([[0., 1., 2., 2.]]))
    assert t["panoptic"].dtype == torch.int32


def test_no_things_and_unknown_category():
    only_stuff = PanopticSample(np.full((2, 2), 40, np.int32), [Segment(40, 9)])
    t = build_targets(only_stuff, META)
    assert t["boxes"].shape == (0, 4) and t["masks"].shape == (0, 2, 2)
    with pytest.raises(ValueError, match="category id"):
        build_targets(PanopticSample(IDS, [Segment(10, 77)]), META)
    with pytest.raises(ValueError, match="semantic variant"):
        build_targets(SAMPLE, META, "things")
