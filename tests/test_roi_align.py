"""`roi_align_matmul` / `roi_align_sparse` and their multi-scale poolers give torchvision's numbers and
gradients."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from panoptix.models.roi_align import (
    MatmulMultiScaleRoIAlign,
    SparseMultiScaleRoIAlign,
    roi_align_matmul,
    roi_align_sparse,
)

POOLERS = [roi_align_matmul, roi_align_sparse]


def _boxes(n: int, gen: torch.Generator, extent: float = 100.0) -> torch.Tensor:
    """Boxes partly outside a 96x80 image, some thinner than a feature pixel."""
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * extent - 10
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 60 + 0.2
    return torch.cat([xy, xy + wh], 1)


@pytest.mark.parametrize("pool", POOLERS)
@pytest.mark.parametrize("sampling_ratio", [2, 0, 1])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_products_equal_torchvision_values_and_gradients(pool, sampling_ratio, aligned):
    gen = torch.Generator().manual_seed(sampling_ratio * 2 + int(aligned))
    feats = torch.randn(3, 5, 20, 24, generator=gen, dtype=torch.float64, requires_grad=True)
    boxes = _boxes(40, gen)
    batch = torch.randint(0, 3, (40,), generator=gen)
    batch[:5] = 2  # an image may hold no box at all: image 1 below
    batch[batch == 1] = 0
    ref = roi_align(feats, torch.cat([batch[:, None].double(), boxes], 1), (7, 6), 0.25, sampling_ratio, aligned)
    got = pool(feats, boxes, batch, (7, 6), 0.25, sampling_ratio, aligned)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    weights = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), feats)
    (g_got,) = torch.autograd.grad((got * weights).sum(), feats)
    torch.testing.assert_close(g_got, g_ref, rtol=0, atol=1e-12)
    assert g_got[1].abs().max() == 0  # no box on image 1


@pytest.mark.parametrize("pool", POOLERS)
def test_roi_align_products_of_no_boxes_are_empty(pool):
    out = pool(torch.randn(2, 4, 8, 8), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), (7, 7), 0.5)
    assert out.shape == (0, 4, 7, 7)


def test_sparse_roi_align_keeps_a_half_precision_input_dtype():
    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(1, 4, 16, 16, generator=gen)
    boxes = _boxes(6, gen, 40).float().clamp(0, 60)
    batch = torch.zeros(6, dtype=torch.long)
    ref = roi_align(feats, torch.cat([batch[:, None].float(), boxes], 1), (7, 7), 0.25, 2)
    got = roi_align_sparse(feats.bfloat16(), boxes, batch, (7, 7), 0.25)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, rtol=2e-2, atol=2e-2)   # bfloat16 input, float32 sums


@pytest.mark.parametrize("pooler", [MatmulMultiScaleRoIAlign, SparseMultiScaleRoIAlign])
def test_multiscale_product_poolers_match_torchvision_across_levels(pooler):
    gen = torch.Generator().manual_seed(0)
    feats = OrderedDict((f"p{i}", torch.randn(2, 8, 128 >> i, 128 >> i, generator=gen, requires_grad=True))
                        for i in (2, 3, 4, 5))
    feats["p6"] = torch.randn(2, 8, 2, 2, generator=gen)  # not pooled
    boxes = [(_boxes(30, gen, 110) * 2).float().clamp(0, 128), (_boxes(20, gen, 110) * 2).float().clamp(0, 128)]
    boxes = [b[(b[:, 2] > b[:, 0] + 1) & (b[:, 3] > b[:, 1] + 1)] for b in boxes]
    names = ["p2", "p3", "p4", "p5"]
    ref_pool = MultiScaleRoIAlign(names, 7, 2, canonical_scale=32)  # spread the boxes over all levels
    ours = pooler(names, 7, 2, canonical_scale=32)
    ref = ref_pool(feats, boxes, [(128, 128)] * 2)
    got = ours(feats, boxes, [(128, 128)] * 2)
    assert len(set(ours.map_levels(boxes).tolist())) >= 3
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    g_ref = torch.autograd.grad(ref.sum(), list(feats.values())[:4])
    g_got = torch.autograd.grad(got.sum(), list(feats.values())[:4])
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
