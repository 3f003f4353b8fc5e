"""Occlusion-aware merges with hand-built inputs: OANet's ranking, UPSNet's panoptic head, Dense CRF."""

from __future__ import annotations

import pytest
import torch

from panoptix.data.meta import IGNORE_INDEX
from panoptix.data.synthetic import synthetic_meta
from panoptix.data.targets import instance_index_map
from panoptix.fusion.crf import crf_refine
from panoptix.fusion.heuristic import heuristic_fusion, semantic_category_table
from panoptix.fusion.ranking import ranking_fusion, ranking_x_score_fusion
from panoptix.fusion.upsnet import panoptic_logits, remove_duplicates, split_channels, upsnet_fusion
from panoptix.models.heads.ranking import SpatialRankingHead, conflict_labels, scatter_masks
from panoptix.models.heads.upsnet import UPSNetPanopticHead, panoptic_target
from panoptix.structures import Instances, PanopticResult, SegmentInfo

META = synthetic_meta()                       # things 1..6 (disc, ..., star), stuff 11..14
TABLE = semantic_category_table(META, "all")  # 10 channels: 6 thing channels (-1), then 4 stuff
DISC, STAR = 0, 5


def _tie_on_person(size=24):
    """A large disc (frequent class, score 0.95) whose predicted mask also covers the small star
    (rare class, score 0.6) sitting on it: the tie-on-person case of OANet (Liu et al. 2019), Figure 7."""
    big = torch.zeros(size, size)
    big[2:22, 2:22] = 0.9
    small = torch.zeros(size, size)
    small[9:15, 9:15] = 0.9
    boxes = torch.tensor([[2.0, 2.0, 22.0, 22.0], [9.0, 9.0, 15.0, 15.0]])
    return Instances(boxes, torch.tensor([0.95, 0.6]), torch.tensor([DISC, STAR]), torch.stack([big, small]),
                     image_size=(size, size))


def _stuff_logits(size=24):
    sem = torch.full((len(TABLE), size, size), -2.0)
    sem[TABLE.index(META.stuff_ids[0])] = 3.0
    return sem


# --------------------------------------------------------------------------- ranking
def test_ranking_keeps_a_small_instance_on_top_that_score_order_loses():
    inst = _tie_on_person()
    inst.extra["rank_scores"] = torch.tensor([0.3, 0.9])  # what the ranking head says (Eq. 3)
    by_score = heuristic_fusion(inst, _stuff_logits(), TABLE, META.thing_ids, stuff_min_area=1)
    by_rank = ranking_fusion(inst, _stuff_logits(), TABLE, META.thing_ids, stuff_min_area=1)
    star = META.thing_ids[STAR]
    # Score order pastes the disc first: the star is 100% covered and dropped.
    assert [s.category_id for s in by_score.segments if s.isthing] == [META.thing_ids[DISC]]
    # Ranking pastes the star first; the disc keeps the rest (36 of 400 px taken, under 0.5).
    things = {s.category_id: s for s in by_rank.segments if s.isthing}
    assert things[star].area == 36 and things[META.thing_ids[DISC]].area == 400 - 36
    assert things[star].score == pytest.approx(0.6)          # the written score stays the detection score
    assert (by_rank.ids[9:15, 9:15] == things[star].id).all()


def test_rank_x_score_order_weighs_the_ranking_score_by_the_detection_score():
    inst = _tie_on_person()                                  # detection scores: disc 0.95, star 0.6
    inst.extra["rank_scores"] = torch.tensor([0.5, 0.7])     # products: disc 0.475, star 0.42
    star, disc = META.thing_ids[STAR], META.thing_ids[DISC]
    by_rank = ranking_fusion(inst, _stuff_logits(), TABLE, META.thing_ids, stuff_min_area=1)
    by_product = ranking_x_score_fusion(inst, _stuff_logits(), TABLE, META.thing_ids, stuff_min_area=1)
    assert sorted(s.category_id for s in by_rank.segments if s.isthing) == sorted([star, disc])
    assert [s.category_id for s in by_product.segments if s.isthing] == [disc]
    inst.extra["rank_scores"] = torch.tensor([0.3, 0.9])     # products: disc 0.285, star 0.54
    by_product = ranking_x_score_fusion(inst, _stuff_logits(), TABLE, META.thing_ids, stuff_min_area=1)
    assert {s.category_id: s.area for s in by_product.segments if s.isthing} == {star: 36, disc: 364}
    assert "rank_x_score" not in inst.extra                  # the caller's instances are left alone
    with pytest.raises(ValueError, match="order"):
        ranking_fusion(inst, _stuff_logits(), TABLE, META.thing_ids, order="product")


def test_ranking_merge_refuses_instances_without_ranking_scores():
    with pytest.raises(ValueError, match="rank_scores"):
        ranking_fusion(_tie_on_person(), _stuff_logits(), TABLE, META.thing_ids)


def test_spatial_ranking_module_learns_to_put_the_rare_class_on_top():
    torch.manual_seed(0)
    head = SpatialRankingHead(num_things=6)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    size = 32
    for step in range(60):
        masks, labels, gt = [], [], []
        for _ in range(2):
            cy, cx = torch.randint(8, 24, (2,)).tolist()
            big = torch.zeros(size, size)
            big[cy - 7:cy + 7, cx - 7:cx + 7] = 0.9
            small = torch.zeros(size, size)
            small[cy - 2:cy + 2, cx - 2:cx + 2] = 0.9
            masks.append(torch.stack([big, small]))
            labels.append(torch.tensor([DISC, STAR]))
            label = torch.full((size, size), IGNORE_INDEX)
            label[big > 0.5] = DISC
            label[small > 0.5] = STAR   # the panoptic truth: the star is on top
            gt.append(label)
        loss = head.loss(masks, labels, torch.stack(gt))["loss_srm"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    inst = _tie_on_person(size=32)
    scores = head.rank_scores(inst.masks, inst.labels)
    assert scores[1] > scores[0] + 0.2   # star above disc: ranking order reverses the score order


def test_srm_targets_are_the_panoptic_labels_on_conflicting_pixels_only():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, :, :3] = True
    masks[1, :, 2:] = True
    labels = torch.arange(16).view(4, 4) % 3
    target = conflict_labels(masks, labels)
    assert torch.equal(target[:, 2], labels[:, 2])
    assert (target[:, [0, 1, 3]] == IGNORE_INDEX).all()
    scattered = scatter_masks(masks, torch.tensor([1, 1]), 3)
    assert scattered.shape == (3, 4, 4) and scattered[1].sum() == 16 and scattered[[0, 2]].sum() == 0


# --------------------------------------------------------------------------- UPSNet
def test_upsnet_logits_of_one_instance_equal_a_hand_computation():
    # Two thing classes (channels 0, 1), two stuff classes (channels 2, 3); a 4x4 image.
    table = [-1, -1, 21, 22]
    sem = torch.zeros(4, 4, 4)
    sem[0] = torch.arange(16.0).view(4, 4) / 10    # thing class 0
    sem[1] = 0.5                                   # thing class 1
    sem[2] = 1.0                                   # stuff 21
    sem[3] = -1.0                                  # stuff 22
    box = torch.tensor([[1.0, 1.0, 3.0, 3.0]])     # pixel centres 1.5 and 2.5: rows/cols 1-2
    mask = torch.full((1, 4, 4), 7.0)              # outside the box it must not count
    mask[0, 1:3, 1:3] = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    stuff_ch, thing_ch = split_channels(table, 2)
    pan = panoptic_logits(sem, stuff_ch, thing_ch, box, torch.tensor([1]), mask)
    assert pan.shape == (2 + 1 + 1, 4, 4)
    assert torch.equal(pan[0], sem[2]) and torch.equal(pan[1], sem[3])
    expected_inst = torch.zeros(4, 4)
    expected_inst[1:3, 1:3] = 0.5 + torch.tensor([[2.0, -1.0], [0.5, 3.0]])   # class-1 logit + mask logit
    assert torch.allclose(pan[2], expected_inst)
    # unknown = max over thing classes - max over the instances' semantic terms (0.5 in the box, 0 outside)
    inside = torch.zeros(4, 4, dtype=torch.bool)
    inside[1:3, 1:3] = True
    expected_unknown = torch.maximum(sem[0], sem[1]) - torch.where(inside, 0.5, 0.0)
    assert torch.allclose(pan[3], expected_unknown)


def test_unknown_channel_takes_the_thing_pixels_of_a_dropped_instance():
    # Training target: instances 0 and 2 kept, instance 1 dropped -> its pixels are "unknown".
    semantic = torch.full((6, 6), 3)        # stuff class index 3 everywhere
    semantic[0, 0] = IGNORE_INDEX
    masks = torch.zeros(3, 6, 6, dtype=torch.uint8)
    masks[0, 0:2, 2:4] = 1
    masks[1, 3:5, 0:2] = 1
    masks[2, 4:6, 4:6] = 1
    semantic[masks.bool().any(0)] = 0       # thing class 0
    lut = torch.tensor([IGNORE_INDEX, IGNORE_INDEX, 0, 1])   # classes 2, 3 are stuff channels 0, 1
    target = panoptic_target(semantic, instance_index_map(masks, (6, 6)), 3, torch.tensor([0, 2]), lut)
    assert (target[0:2, 2:4] == 2).all() and (target[4:6, 4:6] == 3).all()   # kept: channels S+0, S+1
    assert (target[3:5, 0:2] == 2 + 2).all()                                  # dropped: unknown = S+N_k
    assert target[0, 0] == IGNORE_INDEX and target[5, 0] == 1                 # VOID ignored; stuff channel

    # Inference: thing-like pixels explained by no instance win the unknown channel and become VOID.
    sem = torch.full((len(TABLE), 24, 24), -3.0)
    sem[TABLE.index(META.stuff_ids[0])] = 2.0
    sem[DISC, 2:22, 2:22] = 6.0                  # a disc region: the detector found only the star
    sem[STAR, 9:15, 9:15] = 6.5                  # on which the semantic head sees the star
    inst = _tie_on_person()[1:]
    result = upsnet_fusion(inst, sem, TABLE, META.thing_ids, stuff_min_area=1)
    ids = result.ids
    star = [s for s in result.segments if s.isthing]
    assert len(star) == 1 and star[0].category_id == META.thing_ids[STAR]
    disc_only = torch.zeros(24, 24, dtype=torch.bool)
    disc_only[2:22, 2:22] = True
    disc_only[9:15, 9:15] = False
    assert (ids[disc_only] == 0).all()           # unknown -> VOID, not stuff, not the star
    assert (ids[0, :] != 0).all()                # stuff outside


def test_upsnet_head_drops_instances_and_its_loss_trains_the_unknown_channel():
    head = UPSNetPanopticHead(drop_fraction=0.3)
    torch.manual_seed(0)
    assert len(head.keep_indices(10, torch.device("cpu"))) == 7
    assert len(head.keep_indices(1, torch.device("cpu"))) == 1     # at least one, as UPSNet
    assert len(head.keep_indices(0, torch.device("cpu"))) == 0
    with pytest.raises(ValueError):
        UPSNetPanopticHead(drop_fraction=1.0)


def test_upsnet_merge_removes_duplicates_by_mask_iou():
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, 0:4, 0:4] = True
    masks[1, 0:4, 0:3] = True        # IoU 0.75 with 0, same class: removed
    masks[2, 0:4, 0:3] = True        # same pixels, other class: kept
    assert remove_duplicates(masks, torch.tensor([0, 0, 1]), 0.5).tolist() == [True, False, True]
    # class-agnostic (UPSNet's code, the merge's default): the other-class duplicate goes too
    assert remove_duplicates(masks, torch.tensor([0, 0, 1]), 0.5, class_agnostic=True).tolist() == [True, False, False]


def test_upsnet_merge_needs_the_semantic_head_on_all_classes():
    with pytest.raises(ValueError, match="semantic_variant: all"):
        upsnet_fusion(None, torch.zeros(5, 8, 8), semantic_category_table(META, "stuff_things"), META.thing_ids)


# --------------------------------------------------------------------------- CRF
def _crf_case(size=64):
    """Image: a green disc on red; merged result: the disc shifted right by 6 px, noisy logits."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((yy - 32) ** 2 + (xx - 28) ** 2) < 16 ** 2
    image = torch.zeros(3, size, size)
    image[0] = 0.8
    image[:, disc] = torch.tensor([0.1, 0.7, 0.3])[:, None]
    image = (image + 0.03 * torch.randn(image.shape, generator=g)).clamp(0, 1)
    shifted = ((yy - 32) ** 2 + (xx - 34) ** 2) < 17 ** 2
    thing = (shifted.float() * 2 - 1) + 0.8 * torch.randn(size, size, generator=g)
    stuff = 0.8 * torch.randn(size, size, generator=g)
    logits = torch.stack([stuff, thing, torch.full((size, size), -9.0)])   # stuff, instance, unknown
    ids = torch.where(thing > stuff, 1, 2).to(torch.int32)
    segments = [SegmentInfo(1, 1, True, 0.9, int((ids == 1).sum())),
                SegmentInfo(2, 11, False, 1.0, int((ids == 2).sum()))]
    extra = {"panoptic_logits": logits, "channel_segment": torch.tensor([2, 1, 0])}
    result = PanopticResult(ids, segments, extra=extra)
    return image, disc, result


def _boundary_band(mask: torch.Tensor) -> torch.Tensor:
    """Pixels within 1 px (8-neighbourhood) of ``mask``'s boundary, on either side."""
    m = mask.float()[None, None]
    grown = torch.nn.functional.max_pool2d(m, 3, 1, 1)[0, 0] > 0
    shrunk = -torch.nn.functional.max_pool2d(-m, 3, 1, 1)[0, 0] > 0
    return grown & ~shrunk


def _assert_on_the_disc(ids: torch.Tensor, disc: torch.Tensor) -> None:
    """The thing is the disc: at most 8 pixels differ (the disc's boundary has about 100), all of
    them within 1 px of its boundary. A CRF that misses the edge by a pixel all round fails."""
    wrong = (ids == 1) != disc
    assert int(wrong.sum()) <= 8
    assert not (wrong & ~_boundary_band(disc)).any()


def test_torch_crf_moves_the_boundary_to_the_image_edge_and_keeps_ids():
    image, disc, result = _crf_case()
    assert int(((result.ids == 1) != disc).sum()) > 900        # the merged boundary is 6 px off and noisy
    refined = crf_refine(result, image, backend="torch")
    _assert_on_the_disc(refined.ids, disc)
    assert [(s.id, s.category_id, s.isthing) for s in refined.segments] == [(1, 1, True), (2, 11, False)]
    assert [s.area for s in refined.segments] == [int((refined.ids == i).sum()) for i in (1, 2)]
    assert refined.extra["crf_seconds"] > 0 and "panoptic_logits" not in refined.extra


def test_crf_from_labels_only_and_bad_input():
    image, disc, result = _crf_case()
    result.extra.clear()
    refined = crf_refine(result, image, backend="torch", label_confidence=0.6)
    assert ((refined.ids == 1) == disc).float().mean() > ((result.ids == 1) == disc).float().mean()
    with pytest.raises(ValueError, match="does not match"):
        crf_refine(result, image[:, :10], backend="torch")
    with pytest.raises(ValueError, match="backend"):
        crf_refine(result, image, backend="gpu")


def test_torch_and_densecrf_backends_agree_up_to_the_boundary():
    pytest.importorskip("pydensecrf.densecrf", reason="the crf extra (pydensecrf2) is not installed")
    image, disc, result = _crf_case()
    exact = crf_refine(result, image, backend="densecrf")
    approx = crf_refine(result, image, backend="torch")
    _assert_on_the_disc(exact.ids, disc)
    differ = exact.ids != approx.ids
    assert int(differ.sum()) <= 8 and not (differ & ~_boundary_band(disc)).any()
