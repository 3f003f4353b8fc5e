"""Uncertainty-weighted multi-task loss (Kendall et al. 2018): the formula, its gradient, its
minimiser, the clamp, the optimiser's zero decay, and the two-stage system with it."""

from __future__ import annotations

import math

import pytest
import torch

from panoptix.data.datasets import PanopticDataset
from panoptix.data.targets import build_targets
from panoptix.engine.optim import parameter_groups
from panoptix.losses import total_loss
from panoptix.losses.uncertainty import UncertaintyWeighting

from conftest import image_batch, seeded_model


def _weighting(s_inst: float, s_sem: float, **kw) -> UncertaintyWeighting:
    w = UncertaintyWeighting(**kw)
    with torch.no_grad():
        w.log_vars["instance"].fill_(s_inst)
        w.log_vars["semantic"].fill_(s_sem)
    return w


def test_formula_and_gradient_equal_a_hand_computation():
    w = _weighting(0.5, -0.3)
    losses = {"loss_classifier": torch.tensor(2.0), "loss_mask": torch.tensor(3.0), "loss_seg": torch.tensor(4.0)}
    out = w(losses)
    total = total_loss(out)
    expected = math.exp(-0.5) * 5.0 + 0.25 + math.exp(0.3) * 4.0 - 0.15
    assert total.item() == pytest.approx(expected, rel=1e-6)
    total.backward()
    assert w.log_vars["instance"].grad.item() == pytest.approx(-math.exp(-0.5) * 5.0 + 0.5, rel=1e-6)
    assert w.log_vars["semantic"].grad.item() == pytest.approx(-math.exp(0.3) * 4.0 + 0.5, rel=1e-6)
    # raw task sums and s are logged, not summed
    assert out["metric/instance"].item() == pytest.approx(5.0)
    assert out["metric/semantic"].item() == pytest.approx(4.0)
    assert out["metric/s_semantic"].item() == pytest.approx(-0.3)
    assert not out["metric/instance"].requires_grad


def test_regression_task_is_halved_and_init_zero_is_the_plain_sum():
    w = _weighting(0.7, 0.0, regression_tasks=["instance"])
    out = w({"loss_box_reg": torch.tensor(2.0), "loss_seg": torch.tensor(1.0)})
    assert total_loss(out).item() == pytest.approx(0.5 * math.exp(-0.7) * 2.0 + 0.35 + 1.0, rel=1e-6)
    plain = UncertaintyWeighting()({"loss_mask": torch.tensor(1.5), "loss_seg": torch.tensor(0.25)})
    assert total_loss(plain).item() == pytest.approx(1.75)


def test_descent_finds_the_minimiser_log_2L():
    """d/ds (e^-s L + s/2) = 0 at s = log(2 L)."""
    w = UncertaintyWeighting()
    opt = torch.optim.SGD(w.parameters(), lr=0.1)
    for _ in range(400):
        opt.zero_grad()
        total_loss(w({"loss_mask": torch.tensor(3.0), "loss_seg": torch.tensor(0.2)})).backward()
        opt.step()
    assert w.log_vars["instance"].item() == pytest.approx(math.log(6.0), abs=1e-3)
    assert w.log_vars["semantic"].item() == pytest.approx(math.log(0.4), abs=1e-3)


def test_clamp_stops_the_gradient_and_bad_tasks_are_refused():
    w = _weighting(10.0, 0.0)
    out = w({"loss_mask": torch.tensor(1.0), "loss_seg": torch.tensor(1.0)})
    assert out["metric/s_instance"].item() == 6.0
    total_loss(out).backward()
    assert w.log_vars["instance"].grad.item() == 0.0
    with pytest.raises(ValueError, match="only one task"):
        UncertaintyWeighting(tasks={"a": ["*"], "b": ["*"]})
    with pytest.raises(ValueError, match="not tasks"):
        UncertaintyWeighting(regression_tasks=["box"])
    with pytest.raises(KeyError, match="loss_mask"):
        UncertaintyWeighting(tasks={"semantic": ["loss_seg"]})({"loss_mask": torch.tensor(1.0)})


def test_log_variances_are_not_decayed():
    model = torch.nn.ModuleDict({"w": UncertaintyWeighting(), "conv": torch.nn.Conv2d(1, 1, 1)})
    groups = {g["weight_decay"]: g["params"] for g in parameter_groups(model, 1e-4)}
    ids = {id(p) for p in groups[0.0]}
    assert all(id(p) in ids for p in model["w"].parameters())
    assert id(model["conv"].weight) in {id(p) for p in groups[1e-4]}


def test_two_stage_system_with_uncertainty_weighting(synth_root):
    ds = PanopticDataset.synthetic(synth_root, "train")
    model = seeded_model(ds.meta, "panoptic_fpn_tiny", "model.loss_weighting={name: uncertainty}").train()
    samples, images = image_batch(ds)
    targets = [build_targets(s, ds.meta, "all") for s in samples]
    losses = model(images, targets)
    assert {"loss_uncertainty_instance", "loss_uncertainty_semantic", "metric/s_instance",
            "metric/instance", "metric/semantic"} <= set(losses)
    # at s = 0 the weighted total is the raw sum
    raw = losses["metric/instance"] + losses["metric/semantic"]
    assert total_loss(losses).item() == pytest.approx(raw.item(), rel=1e-5)
    total_loss(losses).backward()
    assert model.loss_weighting.log_vars["semantic"].grad.item() == pytest.approx(
        -losses["metric/semantic"].item() + 0.5, rel=1e-4)
