"""The optimiser builder: fused steps where PyTorch supports them, the same update as the loop."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from panoptix.engine.optim import build_optimizer, fused_supported, parameter_groups


def _solver(optimizer: str) -> SimpleNamespace:
    return SimpleNamespace(optimizer=optimizer, base_lr=1e-2, momentum=0.9, betas=(0.9, 0.999), weight_decay=0.05,
                           weight_decay_norm=0.0, weight_decay_bias=None)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))


def _loop_optimizer(model: nn.Module, name: str) -> torch.optim.Optimizer:
    """PyTorch's per-parameter loop, the reference the fused step is compared with."""
    groups = parameter_groups(model, 0.05)
    return torch.optim.SGD(groups, lr=1e-2, momentum=0.9) if name == "sgd" else torch.optim.AdamW(groups, lr=1e-2)


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 5) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(2, 3, 8, 8, generator=gen)).square().mean().backward()
        optimizer.step()


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_cpu_optimizer_is_fused_and_matches_the_loop(name: str) -> None:
    fused_model, loop_model = _model(), _model()
    fused = build_optimizer(fused_model, _solver(name))
    assert all(g["fused"] is True for g in fused.param_groups)
    loop = _loop_optimizer(loop_model, name)
    _train(fused_model, fused)
    _train(loop_model, loop)
    moved = max((a - b).abs().max().item() for a, b in zip(fused_model.parameters(), _model().parameters()))
    assert moved > 1e-3  # the comparison below is between trained weights
    for a, b in zip(fused_model.parameters(), loop_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_not_fused_where_unsupported() -> None:
    assert not fused_supported([{"params": [nn.Parameter(torch.zeros(2, device="meta"))]}])
    assert not fused_supported([{"params": []}])
    assert fused_supported([{"params": [nn.Parameter(torch.zeros(2))]}])


def test_a_loop_optimizer_state_resumes_into_a_fused_one() -> None:
    """Checkpoints written before the fused step (``fused: None`` in their groups) still resume."""
    model = _model()
    loop = _loop_optimizer(model, "adamw")
    _train(model, loop, 2)
    fused = build_optimizer(model, _solver("adamw"))
    fused.load_state_dict(loop.state_dict())
    _train(model, fused, 2)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_fused_step_under_a_grad_scaler_with_unscale_and_clipping(name: str) -> None:
    """The trainer's float16 path (GradScaler, unscale_ before clipping) with the fused step gives the
    unscaled loop's update; run with the CPU scaler, the same code as CUDA's. SGD is the case that
    would show a scale applied twice or not at all (Adam's step is nearly scale-invariant)."""
    scaled_model, plain_model = _model(), _model()
    fused = build_optimizer(scaled_model, _solver(name))
    plain = _loop_optimizer(plain_model, name)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        x = torch.randn(2, 3, 8, 8, generator=gen)
        fused.zero_grad()
        scaler.scale(scaled_model(x).square().mean()).backward()
        scaler.unscale_(fused)
        nn.utils.clip_grad_norm_(scaled_model.parameters(), 10.0)
        scaler.step(fused)
        scaler.update()
        plain.zero_grad()
        plain_model(x).square().mean().backward()
        nn.utils.clip_grad_norm_(plain_model.parameters(), 10.0)
        plain.step()
    for a, b in zip(scaled_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
