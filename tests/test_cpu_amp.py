"""bfloat16 autocast for CPU training (``solver.cpu_amp``): what it turns on, and that every tiny
system trains a step under it."""

from pathlib import Path

import pytest
import torch
from torch import nn

from panoptix.config import load_config
from panoptix.engine.build import build_training
from panoptix.engine.precision import guard_bfloat16_convolutions, precision_note, training_autocast
from panoptix.engine.settings import SolverSettings

from conftest import tiny_overrides

TINY = sorted(p.stem for p in (Path(__file__).parents[1] / "panoptix" / "configs").glob("*_tiny.yaml"))


def test_cpu_amp_is_its_own_switch_and_always_bfloat16():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert training_autocast(SolverSettings(), cpu) == (False, torch.bfloat16)  # amp (on by default) is CUDA's
    assert training_autocast(SolverSettings(cpu_amp=True, amp_dtype="float16"), cpu) == (True, torch.bfloat16)
    assert training_autocast(SolverSettings(), cuda) == (True, torch.float16)
    assert training_autocast(SolverSettings(amp=False, cpu_amp=True), cuda) == (False, torch.float16)
    assert precision_note(SolverSettings(), cpu) is None


def test_precision_note_names_a_cpu_without_native_bfloat16(monkeypatch):
    import panoptix.engine.precision as precision

    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: False)
    note = precision_note(SolverSettings(cpu_amp=True), torch.device("cpu"))
    assert note.startswith("solver.cpu_amp: this CPU has no native bfloat16")
    assert precision_note(SolverSettings(cpu_amp=False), torch.device("cpu")) is None


def _conv_dtypes(model: torch.nn.Module) -> set[torch.dtype]:
    seen: set[torch.dtype] = set()
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda mod, inp, out: seen.add(out.dtype))
    return seen


@pytest.mark.parametrize("cpu_amp", [False, True])
def test_the_step_runs_convolutions_in_bfloat16_only_when_asked(synth_root, tmp_path, cpu_amp):
    cfg = load_config("panoptic_fpn_tiny", tiny_overrides(synth_root, tmp_path, solver__max_iter=2,
                                                          solver__cpu_amp=cpu_amp) + ["data.val.root="])
    trainer = build_training(cfg, progress=False)
    seen = _conv_dtypes(trainer.model)
    summary = trainer.train()
    assert summary["iterations"] == 2
    assert seen == ({torch.bfloat16} if cpu_amp else {torch.float32})
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}  # autocast, not a bfloat16 model


@pytest.mark.slow
@pytest.mark.parametrize("config", TINY)
def test_every_tiny_system_trains_under_cpu_bfloat16(synth_root, tmp_path, config):
    cfg = load_config(config, tiny_overrides(synth_root, tmp_path, solver__max_iter=2, solver__cpu_amp="true")
                      + ["data.val.root="])
    trainer = build_training(cfg, progress=False)
    trainer.train()
    rows = (tmp_path / "train_log.csv").read_text().splitlines()
    header, last = rows[0].split(","), rows[-1].split(",")
    assert last[0] == "2"
    assert all(torch.isfinite(torch.tensor(float(v))) for k, v in zip(header, last) if k.startswith("loss"))


# Shapes where oneDNN's bfloat16 weight gradient was wrong here (3x3, padding 1): (input H, W), stride.
ONE_WIDE = [((1, 1), 2), ((2, 1), 2), ((5, 1), 2), ((3, 1), (1, 2)), ((8, 1), 3), ((3, 2), 3)]


@pytest.mark.parametrize("hw,stride", ONE_WIDE + [((6, 6), 2), ((1, 3), 2)])
def test_guarded_strided_convolutions_have_float32_gradients_on_one_wide_outputs(hw, stride):
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):  # the fault came in 3 of 4 calls
        conv = nn.Conv2d(64, 32, 3, stride=stride, padding=1)
        assert guard_bfloat16_convolutions(conv) == 1
        x = torch.rand(2, 64, *hw, generator=gen, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        gw, gx = torch.autograd.grad((y.float() * torch.arange(y.numel()).view_as(y)).sum(), (conv.weight, x))
        ref = nn.functional.conv2d(x.bfloat16().float(), conv.weight.bfloat16().float(), None, stride, 1)
        rw, rx = torch.autograd.grad((ref * torch.arange(ref.numel()).view_as(ref)).sum(), (conv.weight, x))
        torch.testing.assert_close(gw, rw, rtol=0.02, atol=0.02 * rw.abs().max().item())
        torch.testing.assert_close(gx, rx, rtol=0.02, atol=0.02 * rx.abs().max().item())
    # float32 only where a strided output dimension is one pixel ((1, 3) at stride 2: its height)
    assert y.dtype == (torch.bfloat16 if hw == (6, 6) else torch.float32)


def test_the_guard_changes_nothing_outside_autocast():
    conv = nn.Conv2d(8, 4, 3, stride=2, padding=1)
    x = torch.rand(1, 8, 1, 1)
    before = conv(x)
    guard_bfloat16_convolutions(conv)
    assert torch.equal(conv(x), before) and conv(x).dtype == torch.float32
    assert guard_bfloat16_convolutions(nn.Conv2d(8, 4, 3, padding=1)) == 0  # stride 1: never guarded
