"""The grid_sample deformable convolution against torchvision's kernel: values and gradients."""

import pytest
import torch
from torchvision.ops import deform_conv2d

from panoptix.models.layers import DeformConv3x3
from panoptix.models.sampled_deform_conv import sampled_deform_conv3x3


def _inputs(seed: int, b: int = 2, c: int = 5, h: int = 7, w: int = 6, scale: float = 1.5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    # Offsets up to several pixels, so that samples leave the image on every side.
    offset = torch.randn(b, 18, h, w, generator=g, dtype=torch.float64) * scale
    weight = torch.randn(4, c, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(4, generator=g, dtype=torch.float64)
    return x, offset, weight, bias


@pytest.mark.parametrize("seed", [0, 1])
def test_sampled_deform_conv_equals_torchvision_values_and_gradients(seed):
    x, offset, weight, bias = _inputs(seed)
    leaves = [t.requires_grad_() for t in (x, offset, weight, bias)]
    ours = sampled_deform_conv3x3(x, offset, weight, bias)
    ref = deform_conv2d(x, offset, weight, bias, padding=1)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    upstream = torch.randn_like(ref)
    ours_grads = torch.autograd.grad((ours * upstream).sum(), leaves)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), leaves)
    for name, a, b in zip(("x", "offset", "weight", "bias"), ours_grads, ref_grads):
        # Bilinear weights have kinks at integer positions; random float64 offsets never sit on one.
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8, msg=f"gradient of {name}")


def test_zero_offsets_give_a_plain_convolution():
    x, _, weight, bias = _inputs(2)
    out = sampled_deform_conv3x3(x, torch.zeros(2, 18, 7, 6, dtype=torch.float64), weight, bias)
    torch.testing.assert_close(out, torch.nn.functional.conv2d(x, weight, bias, padding=1))


def test_offset_shape_is_checked():
    x, offset, weight, _ = _inputs(3)
    with pytest.raises(ValueError, match="offset must be"):
        sampled_deform_conv3x3(x, offset[:, :9], weight)


def test_module_impls_share_parameters_and_agree():
    torch.manual_seed(0)
    sampled = DeformConv3x3(6, 8, impl="sampled")
    with torch.no_grad():
        sampled.offset.weight.normal_(std=0.3)  # learned offsets, not the zero initialisation
    reference = DeformConv3x3(6, 8, impl="torchvision")
    reference.load_state_dict(sampled.state_dict())
    x = torch.randn(2, 6, 9, 11)
    torch.testing.assert_close(sampled(x), reference(x), rtol=1e-4, atol=1e-4)
    assert DeformConv3x3(6, 8).impl == "auto"
    with pytest.raises(ValueError, match="impl must be one of"):
        DeformConv3x3(6, 8, impl="cuda")
