"""The training step's autocast: ``solver.amp`` / ``amp_dtype`` on CUDA, ``solver.cpu_amp`` (bfloat16)
on the CPU."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from panoptix.engine.settings import SolverSettings


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), as oneDNN reports it."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def training_autocast(solver: SolverSettings, device: torch.device) -> tuple[bool, torch.dtype]:
    """(enabled, dtype) of the training step's autocast on ``device``: ``amp`` with ``amp_dtype`` on
    CUDA; ``cpu_amp`` with bfloat16 on the CPU (float16 autocast on a CPU is emulated and slower)."""
    if device.type == "cuda":
        return bool(solver.amp), getattr(torch, solver.amp_dtype)
    return bool(solver.cpu_amp) and device.type == "cpu", torch.bfloat16


def precision_note(solver: SolverSettings, device: torch.device) -> str | None:
    """One line when ``cpu_amp`` is set on a CPU without native bfloat16; None otherwise."""
    if not (solver.cpu_amp and device.type == "cpu") or cpu_has_native_bfloat16():
        return None
    return ("solver.cpu_amp: this CPU has no native bfloat16 (AVX512-BF16 or AMX); bfloat16 autocast may make "
            "the training step slower than float32")


def _one_wide_output(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """Whether a strided dimension of ``conv``'s output on ``x`` (N, C, H, W) is one pixel wide."""
    if isinstance(conv.padding, str):
        return False
    for n, k, s, p, d in zip(x.shape[-2:], conv.kernel_size, conv.stride, conv.padding, conv.dilation):
        if s > 1 and (n + 2 * p - d * (k - 1) - 1) // s + 1 == 1:
            return True
    return False


def guard_bfloat16_convolutions(model: nn.Module) -> int:
    """Run each strided convolution of ``model`` in float32 under CPU autocast when its output is one
    pixel wide in a strided dimension; returns how many convolutions were guarded.

    Why: oneDNN's bfloat16 weight gradient (torch 2.11, AVX512-BF16) returns garbage, NaN or 1e35, in
    about 3 of 4 calls of a 3x3 stride-2 convolution whose output is one pixel wide (an FCOS P7 on a
    64 px image); ``tests/test_cpu_amp.py`` checks it against float32 on such shapes. Those maps are
    a few pixels, so float32 there costs nothing.
    """
    guarded = 0
    for conv in model.modules():
        if isinstance(conv, nn.Conv2d) and max(conv.stride) > 1:
            conv.forward = _float32_when_one_wide(conv.forward, conv)
            guarded += 1
    return guarded


def _float32_when_one_wide(forward: Callable[[torch.Tensor], torch.Tensor], conv: nn.Conv2d):
    def run(x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and _one_wide_output(x, conv):
            with torch.autocast("cpu", enabled=False):
                return forward(x.float())
        return forward(x)

    return run
