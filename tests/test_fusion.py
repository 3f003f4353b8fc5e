"""Heuristic fusion: the vectorised "already taken" rule equals the sequential one; stuff rules."""

from __future__ import annotations

import torch

from panoptix.data.synthetic import synthetic_meta
from panoptix.fusion.heuristic import accept_instances, heuristic_fusion, semantic_category_table
from panoptix.structures import Instances


def _sequential(masks, thresh=0.5):
    taken = torch.zeros(masks.shape[1:], dtype=torch.bool)
    out = []
    for m in masks:
        area, inter = int(m.sum()), int((m & taken).sum())
        ok = area > 0 and inter <= thresh * area
        out.append(ok)
        if ok:
            taken |= m
    return torch.tensor(out, dtype=torch.bool)


def test_accept_matches_sequential_rule():
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        n = int(torch.randint(1, 25, (1,), generator=g))
        masks = torch.zeros(n, 24, 24, dtype=torch.bool)
        for i in range(n):
            y, x = torch.randint(0, 22, (2,), generator=g).tolist()
            h, w = torch.randint(0, 12, (2,), generator=g).tolist()
            masks[i, y:y + h, x:x + w] = True
        assert torch.equal(accept_instances(masks), _sequential(masks))


def _inst(boxes_masks, scores, labels, size=(20, 20)):
    masks = torch.zeros(len(scores), *size)
    for m, (y0, y1, x0, x1) in zip(masks, boxes_masks):
        m[y0:y1, x0:x1] = 0.9
    return Instances(torch.zeros(len(scores), 4), torch.tensor(scores), torch.tensor(labels), masks)


def test_fusion_rules():
    meta = synthetic_meta()
    table = semantic_category_table(meta, "stuff_things")
    assert table == [-1, *meta.stuff_ids]
    inst = _inst([(0, 10, 0, 10), (0, 10, 5, 15), (2, 8, 2, 8), (15, 20, 15, 20)], [0.9, 0.8, 0.95, 0.3], [0, 1, 2, 3])
    sem = torch.zeros(len(table), 20, 20)
    sem[1, :, :] = 1.0           # stuff class 1 everywhere...
    sem[2, 19, 0:3] = 5.0        # ...but a 3 px patch of stuff class 2 (below the minimum area)
    sem[0, 12:15, 0:4] = 5.0     # and a "things" blob that no instance explains
    r = heuristic_fusion(inst, sem, table, meta.thing_ids, stuff_min_area=10)
    segs = {s.id: s for s in r.segments}
    # 0.95 first (36 px), then 0.9 (100 px, 36 taken -> kept), 0.8 (100 px, 50 taken -> kept at exactly 0.5),
    # 0.3 below the score threshold.
    things = [(s.category_id, s.area) for s in r.segments if s.isthing]
    assert things == [(meta.thing_ids[2], 36), (meta.thing_ids[0], 64), (meta.thing_ids[1], 50)]
    stuff = [s for s in r.segments if not s.isthing]
    assert [s.category_id for s in stuff] == [meta.stuff_ids[0]]
    assert stuff[0].area == 400 - 150 - 12 - 3 + 0  # thing pixels, the things blob and the tiny stuff patch are VOID
    ids = r.ids
    assert ids.dtype == torch.int32 and ids.shape == (20, 20)
    for sid, s in segs.items():
        assert int((ids == sid).sum()) == s.area
    assert int((ids == 0).sum()) == 12 + 3


def test_fusion_overlap_skip_and_all_variant():
    meta = synthetic_meta()
    table = semantic_category_table(meta, "all")
    assert sum(t == -1 for t in table) == meta.num_things
    inst = _inst([(0, 10, 0, 10), (0, 10, 2, 12)], [0.9, 0.8], [0, 0])  # second is 80 % covered: skipped
    sem = torch.zeros(len(table), 20, 20)
    stuff_idx = table.index(meta.stuff_ids[3])
    sem[stuff_idx] = 1.0
    r = heuristic_fusion(inst, sem, table, meta.thing_ids, stuff_min_area=0)
    assert [s.isthing for s in r.segments] == [True, False]
    assert r.segments[1].category_id == meta.stuff_ids[3] and r.segments[1].area == 300


def test_fusion_without_instances():
    meta = synthetic_meta()
    table = semantic_category_table(meta, "stuff_things")
    sem = torch.zeros(len(table), 8, 8)
    sem[3] = 1
    empty = Instances(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), torch.zeros(0, 8, 8))
    for inst in (None, empty):
        r = heuristic_fusion(inst, sem, table, meta.thing_ids, stuff_min_area=64)
        assert [(s.category_id, s.area) for s in r.segments] == [(meta.stuff_ids[2], 64)]
        assert heuristic_fusion(inst, sem, table, meta.thing_ids).segments == []  # 64 px < detectron2's 4096


def test_stuff_area_limit_is_in_pixels_of_the_original_image():
    """detectron2's 4096 px (OANet's 4900) at the image's own size; a fraction only when asked for."""
    meta = synthetic_meta()
    table = semantic_category_table(meta, "stuff_things")
    small = torch.zeros(len(table), 100, 100)
    small[1] = 1.0
    small[2, :60, :60] = 2.0          # 3600 px of stuff class 2 at 100x100, 14400 px at 200x200
    big = torch.nn.functional.interpolate(small[None], size=(200, 200), mode="nearest")[0]
    kept = {}
    for name, sem in (("small", small), ("big", big)):
        for limit in (4096, 4900):
            r = heuristic_fusion(None, sem, table, meta.thing_ids, stuff_min_area=limit)
            kept[name, limit] = sorted(s.category_id for s in r.segments)
        r = heuristic_fusion(None, sem, table, meta.thing_ids, stuff_min_area_fraction=0.3)
        kept[name, "fraction"] = sorted(s.category_id for s in r.segments)
    a, b = meta.stuff_ids[0], meta.stuff_ids[1]
    assert kept["small", 4096] == kept["small", 4900] == [a]    # 3600 px < 4096: dropped (6400 px kept)
    assert kept["big", 4096] == kept["big", 4900] == [a, b]     # 14400 px: kept
    assert kept["small", "fraction"] == kept["big", "fraction"] == [a, b]  # 36 % of the image either way


def test_stuff_only_source_fills_unexplained_thing_pixels():
    """OANet (Liu et al. 2019, 3.1) uses only the stuff predictions: a free pixel whose argmax is a thing
    class gets its best stuff class instead of VOID."""
    meta = synthetic_meta()
    table = semantic_category_table(meta, "all")
    thing_idx, s1, s2 = table.index(-1), table.index(meta.stuff_ids[0]), table.index(meta.stuff_ids[1])
    sem = torch.zeros(len(table), 10, 10)
    sem[s1] = 1.0
    sem[thing_idx, :4] = 5.0   # a thing-like region no instance explains...
    sem[s2, :4] = 2.0          # ...whose best stuff class is s2
    argmax = heuristic_fusion(None, sem, table, meta.thing_ids, stuff_min_area=1)
    assert int((argmax.ids == 0).sum()) == 40
    only = heuristic_fusion(None, sem, table, meta.thing_ids, stuff_min_area=1, stuff_source="stuff_only")
    assert int((only.ids == 0).sum()) == 0
    assert sorted((s.category_id, s.area) for s in only.segments) == sorted([(meta.stuff_ids[0], 60),
                                                                            (meta.stuff_ids[1], 40)])
