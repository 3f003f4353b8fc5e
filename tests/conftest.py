"""Shared fixtures: small synthetic datasets written once per session, the shared COCO sample."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from panoptix.data.perturb import write_perturbed
from panoptix.data.synthetic import SynthConfig, synthetic_paths, write_synthetic

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PANOPTIX_SHARED", REPO.parent / "shared"))
COCO_SAMPLE = SHARED / "data" / "coco_panoptic_val2017_sample"


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    write_synthetic(root, {"train": 6, "val": 24}, seed=7, cfg=SynthConfig(size=96), workers=1, progress=False)
    return root


@pytest.fixture(scope="session")
def synth_val(synth_root) -> dict[str, Path]:
    return synthetic_paths(synth_root, "val")


@pytest.fixture(scope="session")
def heavy_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("heavy")
    write_synthetic(root, {"val": 24}, seed=3, cfg=SynthConfig(size=96, occlusion="heavy"), workers=1, progress=False)
    return root


@pytest.fixture(scope="session")
def coco_sample() -> dict[str, Path]:
    d = COCO_SAMPLE / "sample_data"
    if not d.is_dir():
        pytest.fail(f"shared COCO sample not found at {COCO_SAMPLE}; set PANOPTIX_SHARED")
    return {"gt_json": d / "panoptic_examples.json", "gt_dir": d / "panoptic_examples",
            "categories": COCO_SAMPLE / "panoptic_coco_categories.json"}


def perturbed(tmp_path: Path, gt_json: Path, gt_dir: Path, seed: int, strength: float = 1.0) -> tuple[Path, Path]:
    pj, pd = tmp_path / f"pred_{seed}.json", tmp_path / f"pred_{seed}"
    write_perturbed(gt_json, gt_dir, pj, pd, seed=seed, strength=strength)
    return pj, pd


def seeded_model(meta, config: str, *overrides: str):
    """A system built from a bundled config with seed 0 (same weights in every test)."""
    import torch

    from panoptix.config import load_config
    from panoptix.engine.build import build_model

    torch.manual_seed(0)
    return build_model(load_config(config, list(overrides)), meta)


def image_batch(ds, n: int = 2):
    """The first ``n`` samples of a dataset and their images as (3, H, W) float tensors in 0..1."""
    import numpy as np
    import torch

    samples = [ds[i] for i in range(n)]
    images = [torch.from_numpy(np.array(s.image)).permute(2, 0, 1).float() / 255 for s in samples]
    return samples, images


def tiny_overrides(synth_root: Path, out: Path, **extra) -> list[str]:
    """``key=value`` overrides that make the tiny config train in seconds on the 96 px fixture set."""
    values = {"data.train.root": synth_root, "data.val.root": synth_root, "engine.output_dir": out,
              "data.min_size_train": "[64]", "data.max_size_train": 128, "data.num_workers": 0,
              "solver.batch_size": 2, "solver.max_iter": 4, "solver.warmup_iters": 2, "solver.steps": "[100]",
              "engine.eval_period": 0, "engine.log_period": 1, "engine.checkpoint_period": 0, **extra}
    return [f"{k.replace('__', '.')}={v}" for k, v in values.items()]


def tiny_trainer(synth_root: Path, out: Path, val: bool = False, **extra):
    """The `Trainer` ``panoptix train`` would build for the tiny config with `tiny_overrides` (no
    validation set unless ``val``), without a progress bar."""
    from panoptix.config import load_config
    from panoptix.engine.build import build_training

    overrides = tiny_overrides(synth_root, out, **extra) + ([] if val else ["data.val.root="])
    return build_training(load_config("panoptic_fpn_tiny", overrides), progress=False)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def trained_tiny_other_seed(synth_root, tmp_path_factory) -> Path:
    """Like `trained_tiny` with engine.seed=1: a second, different end for fusion tests."""
    from panoptix.cli import main

    out = tmp_path_factory.mktemp("trained_seed1")
    assert main(["train", "--config", "panoptic_fpn_tiny", *tiny_overrides(synth_root, out, engine__seed=1)]) == 0
    return out


@pytest.fixture(scope="session")
def trained_tiny(synth_root, tmp_path_factory) -> Path:
    """Output folder of a 4-iteration tiny training run (checkpoint, logs, curves)."""
    from panoptix.cli import main

    out = tmp_path_factory.mktemp("trained")
    assert main(["train", "--config", "panoptic_fpn_tiny", *tiny_overrides(synth_root, out)]) == 0
    return out
