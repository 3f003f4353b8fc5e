"""CIAE (Gao et al. 2021): the loss, the memory, the merge, box filtering and FCOS matching, with known answers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from panoptix.fusion.embedding import assign_segments, embedding_fusion
from panoptix.losses.ciae import (
    CIAELoss,
    expand_boxes,
    inside_boxes,
    memory_momentum,
    segment_means,
    triplet_embedding_loss,
)
from panoptix.models.heads.fcos import FCOSHead, centerness_target, iou_loss

MARGIN = 0.15


# --------------------------------------------------------------------------- loss (Eqs. 5-9)
def test_triplet_loss_equals_a_hand_computation():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    target = torch.tensor([0, 0])
    # pixel 0 sits on its query: d = [0, 1, 2]; only its own term max(0 - 0 + m, 0) = m is non-zero.
    own = -math.log(1 - MARGIN / (2 + MARGIN))
    # pixel 1 is orthogonal to its query: d = [1, 0, 1], d_neg = [0, 0, 1]: hinges 1 + m, 1 + m, m.
    wrong = -math.log(1 - (1 + MARGIN) / (2 + MARGIN))
    out = triplet_embedding_loss(p, queries, target, MARGIN, top_k=5)
    assert out.tolist() == pytest.approx([own, 2 * wrong + own], rel=1e-5)
    # Eq. 9 read per pixel: top_k=2 keeps each pixel's two largest terms.
    out2 = triplet_embedding_loss(p, queries, target, MARGIN, top_k=2)
    assert out2.tolist() == pytest.approx([own, 2 * wrong], rel=1e-5)
    # The box filter sets a similarity to 0: query 1 (sim 1 for pixel 1) filtered -> d_neg = 1.
    keep = torch.tensor([[True, True, True], [True, False, True]])
    out3 = triplet_embedding_loss(p, queries, target, MARGIN, top_k=5, keep=keep)
    assert out3[1].item() == pytest.approx(wrong + 2 * own, rel=1e-5)


def test_ciae_loss_on_a_two_pixel_image_equals_a_hand_computation():
    """One stuff pixel and one thing pixel; merged things: memory rows (thing, stuff)."""
    loss = CIAELoss(num_categories=2, stuff_rows=[1], embed_dim=2, total_iters=10, filter_box_scale=None)
    loss.memory.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    raw = torch.tensor([[3.0, 0.0], [0.0, 2.0]]).T.reshape(1, 2, 1, 2)      # pixel 0 -> (1,0), pixel 1 -> (0,1)
    category = torch.tensor([[[1, 0]]])                                       # pixel 0 stuff (row 1), pixel 1 thing
    instance = torch.tensor([[[-1, 0]]])
    loss.eval()
    out = loss(raw, category, instance, [torch.tensor([[1.0, 0.0, 2.0, 1.0]])])
    own = -math.log(1 - MARGIN / (2 + MARGIN))
    wrong = -math.log(1 - (1 + MARGIN) / (2 + MARGIN))
    # CAE: both pixels sit on the wrong memory row: terms (1+m, 1+m) each.
    assert out["loss_cae"].item() == pytest.approx((2 * wrong + 2 * wrong) / 2, rel=1e-5)
    # IAE queries: [stuff memory (0,1), instance mean (0,1)]. Pixel 0 (stuff, target 0): sims [0, 0] ->
    # d = [1, 1], d_neg = [0, 1]: terms 1+m, m. Pixel 1 (thing, weight 5, target 1): sims [1, 1] ->
    # d = [0, 0], d_neg = [0, 0]: terms m, m.
    iae = ((wrong + own) + 5 * (own + own)) / 2
    assert out["loss_iae"].item() == pytest.approx(2.0 * iae, rel=1e-5)
    assert int(loss.step) == 0                                               # eval: memory untouched


@pytest.mark.parametrize("box, stuff_weight", [([0.0, 0.0, 2.0, 1.0], 3.0), ([1.0, 0.0, 2.0, 1.0], 1.0)])
def test_box_stuff_weight_weighs_the_stuff_pixels_inside_a_thing_box(box, stuff_weight):
    """The two-pixel image above with ``box_stuff_weight=3``: the stuff pixel weighs 3 in L_IAE when the
    thing's box covers it, 1 when it does not; L_CAE is unchanged."""
    loss = CIAELoss(num_categories=2, stuff_rows=[1], embed_dim=2, total_iters=10, filter_box_scale=None,
                    box_stuff_weight=3.0)
    loss.memory.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    raw = torch.tensor([[3.0, 0.0], [0.0, 2.0]]).T.reshape(1, 2, 1, 2)
    loss.eval()
    out = loss(raw, torch.tensor([[[1, 0]]]), torch.tensor([[[-1, 0]]]), [torch.tensor([box])])
    own = -math.log(1 - MARGIN / (2 + MARGIN))
    wrong = -math.log(1 - (1 + MARGIN) / (2 + MARGIN))
    assert out["loss_cae"].item() == pytest.approx(2 * wrong, rel=1e-5)
    assert out["loss_iae"].item() == pytest.approx(2.0 * (stuff_weight * (wrong + own) + 5 * 2 * own) / 2, rel=1e-5)


def test_ciae_loss_gradient_flows_to_the_embeddings_only():
    torch.manual_seed(0)
    loss = CIAELoss(num_categories=3, stuff_rows=[1, 2], embed_dim=4, total_iters=100)
    raw = torch.randn(2, 4, 6, 6, requires_grad=True)
    category = torch.randint(0, 3, (2, 6, 6))
    instance = torch.where(category == 0, torch.randint(0, 2, (2, 6, 6)), torch.full((2, 6, 6), -1))
    boxes = [torch.tensor([[0.0, 0.0, 6.0, 6.0], [0.0, 0.0, 3.0, 3.0]])] * 2
    out = loss(raw, category, instance, boxes)
    sum(out.values()).backward()
    assert raw.grad is not None and raw.grad.abs().sum() > 0
    assert not loss.memory.requires_grad


# --------------------------------------------------------------------------- memory (Eqs. 13-14)
def test_memory_momentum_follows_eq_13():
    assert memory_momentum(0, 100) == pytest.approx(1 - 1e-4)
    assert memory_momentum(50, 100) == pytest.approx(1 - 1e-4 * 0.125)
    assert memory_momentum(100, 100) == 1.0
    assert memory_momentum(500, 100) == 1.0                                  # t clamped to T


def test_memory_update_moves_present_rows_only_and_renormalises():
    loss = CIAELoss(num_categories=3, stuff_rows=[1, 2], embed_dim=2, total_iters=4, momentum=0.5)
    loss.memory.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    sums = torch.tensor([[0.0, 2.0], [0.0, 0.0], [0.0, 0.0]])
    loss.update_memory(sums, torch.tensor([2, 0, 0]))
    expected = F.normalize(torch.tensor([0.5, 0.5]), dim=0)                 # 0.5 * (1,0) + 0.5 * (0,1)
    assert torch.allclose(loss.memory[0], expected)
    assert torch.equal(loss.memory[1:], torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    assert int(loss.step) == 1
    # The Eq. 13 schedule at t = 1 of T = 4: lambda = 1 - 1e-4 (3/4)^3.
    sched = CIAELoss(num_categories=1, stuff_rows=[], embed_dim=2, total_iters=4)
    sched.memory.copy_(torch.tensor([[1.0, 0.0]]))
    sched.step.fill_(1)
    sched.update_memory(torch.tensor([[0.0, 1.0]]), torch.tensor([1]))
    lam = 1 - 1e-4 * 0.75 ** 3
    assert torch.allclose(sched.memory[0], F.normalize(torch.tensor([lam, 1 - lam]), dim=0))


def test_segment_means_sum_per_index():
    raw = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    sums, pixels = segment_means(raw, torch.tensor([0, 0, 2]), 3)
    assert sums.tolist() == [[4.0, 0.0], [0.0, 0.0], [0.0, 2.0]] and pixels.tolist() == [2, 0, 1]


# --------------------------------------------------------------------------- box filtering
def test_boxes_enlarged_about_their_centres_and_pixel_centres_tested():
    assert expand_boxes(torch.tensor([[10.0, 10.0, 20.0, 30.0]]), 1.5).tolist() == [[7.5, 5.0, 22.5, 35.0]]
    xy = torch.tensor([[7, 5], [6, 5], [22, 34], [22, 35]])
    inside = inside_boxes(xy, torch.tensor([[7.5, 5.0, 22.5, 35.0]]))[:, 0]
    assert inside.tolist() == [True, False, True, False]                    # centres 7.5 in, 6.5 out; 35.5 out


def test_box_filter_keeps_an_instance_out_of_pixels_outside_its_box():
    """Two look-alike instances: without the filter the first query takes both; with it each keeps its box."""
    e = torch.zeros(2, 4, 8)
    e[0] = 1.0                                                               # every pixel the same embedding
    stuff = torch.tensor([[0.0, 1.0]])
    queries = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [4.0, 0.0, 8.0, 4.0]])
    ids, areas = assign_segments(e, stuff, queries, boxes, stuff_min_area=0, box_filter=True)
    assert (ids[:, :4] == 2).all() and (ids[:, 4:] == 3).all() and areas.tolist() == [0, 16, 16]
    ids, _ = assign_segments(e, stuff, queries, boxes, stuff_min_area=0, box_filter=False)
    assert (ids == 2).all()


# --------------------------------------------------------------------------- merge (Eq. 16)
def test_pixel_assignment_on_a_constructed_embedding_map():
    """Left half sky (stuff), right half two objects; a tiny stuff patch under the area limit is VOID."""
    e = torch.zeros(3, 6, 6)
    e[0, :, :3] = 1.0                                  # sky
    e[1, :3, 3:] = 1.0                                 # object A (top right)
    e[2, 3:, 3:] = 1.0                                 # object B (bottom right)
    e[:, 0, 0] = torch.tensor([0.0, 0.6, 0.8])         # an odd pixel: most like B's embedding (0.8) but outside B's box
    stuff = torch.tensor([[1.0, 0.0, 0.0]])
    queries = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    boxes = torch.tensor([[3.0, 0.0, 6.0, 3.0], [3.0, 3.0, 6.0, 6.0]])
    result = embedding_fusion(e, stuff, queries, boxes, torch.tensor([1, 0]), torch.tensor([0.9, 0.8]),
                              stuff_categories=[50], thing_categories=[1, 2], stuff_min_area=4)
    ids = result.ids
    assert ids[0, 0] == 1                               # both instances filtered there: sims 0, 0 vs sky 0
    assert (ids[:, 1:3] == 1).all() and (ids[:3, 3:] == 2).all() and (ids[3:, 3:] == 3).all()
    segs = {s.id: (s.category_id, s.isthing, s.area) for s in result.segments}
    assert segs == {1: (50, False, 18), 2: (2, True, 9), 3: (1, True, 9)}
    # Raise the stuff limit above 18 px: sky becomes VOID, the things stay.
    small = embedding_fusion(e, stuff, queries, boxes, torch.tensor([1, 0]), torch.tensor([0.9, 0.8]),
                             stuff_categories=[50], thing_categories=[1, 2], stuff_min_area=19)
    assert (small.ids[:, :3] == 0).all() and sorted(s.id for s in small.segments) == [2, 3]


# --------------------------------------------------------------------------- FCOS
def test_fcos_positives_lie_inside_masks_not_just_boxes():
    head = FCOSHead(in_channels=8, num_things=2, levels=("p3",), strides=(8,), size_bounds=(), num_convs=1,
                    embed_dim=0)
    mask = torch.zeros(1, 32, 32, dtype=torch.uint8)
    mask[0, :16, :16] = 1                               # an L-shaped object: its box is 32x32, the
    mask[0, :, :4] = 1                                  # mask misses the bottom-right quadrant
    target = {"semantic": torch.zeros(32, 32, dtype=torch.int64), "masks": mask,
              "boxes": torch.tensor([[0.0, 0.0, 32.0, 32.0]]), "labels": torch.tensor([1])}
    locations = head.locations({"cls": [torch.zeros(1, 2, 4, 4)]})
    cls, ltrb, index = head.match(locations, target)
    grid = cls.reshape(4, 4)
    assert grid[:2, :2].eq(1).all() and grid[2:, 2:].eq(2).all()          # 2 = background (num_things)
    assert grid[2:, 0].eq(2).all()                                          # x = 4 is outside the 4 px strip
    assert ltrb[0].tolist() == [4.0, 4.0, 28.0, 28.0]


def test_iou_loss_and_centerness_known_values():
    t = torch.tensor([[2.0, 2.0, 2.0, 2.0]])
    assert iou_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert iou_loss(torch.tensor([[1.0, 1.0, 1.0, 1.0]]), t).item() == pytest.approx(math.log(4.0), rel=1e-5)
    assert centerness_target(torch.tensor([[1.0, 2.0, 3.0, 2.0]])).item() == pytest.approx(math.sqrt(1 / 3))


def test_fcos_nms_is_class_wise_unless_class_agnostic():
    """Two detections of one object under two classes: FCOS keeps both, class-agnostic NMS the better one."""
    def detect(agnostic: bool):
        head = FCOSHead(in_channels=8, num_things=2, levels=("p3",), strides=(8,), size_bounds=(), num_convs=1,
                        embed_dim=0, score_thresh=0.1, class_agnostic_nms=agnostic)
        cls = torch.full((1, 2, 2, 2), -10.0)
        cls[0, 0, 0, 0], cls[0, 1, 0, 1] = 3.0, 1.0                         # class 0 at (4, 4), class 1 at (12, 4)
        reg = torch.full((1, 4, 2, 2), 20.0)                                 # both boxes clamp to the whole image
        out = {"cls": [cls], "reg": [reg], "ctr": [torch.full((1, 1, 2, 2), 10.0)], "emb": []}
        return head.detect(out, [(16, 16)])[0]

    both = detect(False)
    assert sorted(both.labels.tolist()) == [0, 1] and len(both) == 2
    one = detect(True)
    assert one.labels.tolist() == [0] and one.extra["locations"].tolist() == [[4.0, 4.0]]
    assert one.boxes.tolist() == [[0.0, 0.0, 16.0, 16.0]]
