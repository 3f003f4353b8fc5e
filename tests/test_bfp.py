"""Libra R-CNN's balanced feature pyramid: integration on known inputs, the zero-initialised
non-local output, the attention against an explicit softmax, and the FPN neck with it."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch

from panoptix.models.bfp import BalancedFeaturePyramid, NonLocal2d
from panoptix.models.necks import FPN

SIZES = [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]


def test_integrate_averages_levels_at_the_refine_size():
    levels = [torch.full((1, 2, *s), float(i + 1)) for i, s in enumerate(SIZES)]
    levels[0][0, 0, 5, 7] = 100.0  # a spike on the finest level survives the max-pool into cell (1, 1)
    bfp = BalancedFeaturePyramid(2, 5, refine_level=2, refine="none")
    bsf = bfp.integrate(levels)
    assert bsf.shape == (1, 2, 4, 6)
    expected = torch.full((1, 2, 4, 6), 3.0)
    expected[0, 0, 1, 1] = (100.0 + 2 + 3 + 4 + 5) / 5
    assert torch.equal(bsf, expected)
    out = bfp(levels)
    assert [tuple(o.shape[-2:]) for o in out] == SIZES
    # strengthen: every level gains the (refined) balanced feature resized to it
    spike = expected[0, 0, 1, 1]
    assert torch.equal(out[4][0, :, 0], torch.tensor([[5.0 + spike, 8.0], [8.0, 8.0]]))  # max-pooled down
    # nearest upsampling: the 4x4 block of cell (1, 1)
    assert out[0][0, 0, 4, 4] == 1.0 + spike and out[0][0, 0, 3, 4] == 4.0


def test_non_local_starts_as_the_identity_and_matches_an_explicit_softmax():
    torch.manual_seed(0)
    block = NonLocal2d(4)
    x = torch.randn(2, 4, 3, 5)
    assert torch.equal(block(x), x)
    with torch.no_grad():
        block.out.weight.copy_(torch.eye(4)[:, :, None, None])
        for conv in (block.g, block.theta, block.phi):
            conv.weight.normal_()
    tok = {n: getattr(block, n)(x).flatten(2) for n in ("g", "theta", "phi")}    # (B, C, HW)
    attn = torch.softmax(tok["theta"].transpose(1, 2) @ tok["phi"] / math.sqrt(4), dim=-1)
    y = (attn @ tok["g"].transpose(1, 2)).transpose(1, 2).reshape(2, 4, 3, 5)
    assert torch.allclose(block(x), x + y, atol=1e-5)


def test_fpn_with_bfp_keeps_the_pyramid_shapes():
    torch.manual_seed(0)
    feats = OrderedDict((f"c{i}", torch.randn(1, c, 64 // 2 ** i, 48 // 2 ** i))
                        for i, c in zip(range(2, 6), (8, 16, 32, 64)))
    plain, libra = FPN([8, 16, 32, 64], 16), FPN([8, 16, 32, 64], 16, bfp=True)
    libra.fpn.load_state_dict(plain.fpn.state_dict())
    a, b = plain(feats), libra(feats)
    assert list(b) == ["p2", "p3", "p4", "p5", "p6"]
    assert all(a[k].shape == b[k].shape for k in a)
    # the non-local output is zero at init: strengthen adds the plain integrated mean
    bsf = libra.bfp.integrate(list(a.values()))
    assert torch.allclose(b["p4"], a["p4"] + bsf, atol=1e-6)
    with pytest.raises(ValueError, match="refine_level"):
        FPN([8, 16, 32, 64], 16, bfp=True, bfp_refine_level=5)
