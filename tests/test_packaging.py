"""A real package: the wheel carries the bundled configs, and an installed (not editable) panoptix
lists them and runs a short demo from another directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO


@pytest.mark.slow
def test_an_installed_wheel_carries_its_configs_and_runs_the_demo(tmp_path):
    wheels = tmp_path / "wheels"
    # no build isolation: the tests never download (the venv's setuptools builds it)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next(wheels.glob("panoptix-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "panoptix/configs/panoptic_fpn_tiny.yaml" in names and "panoptix/cli/__main__.py" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "configs/"))]
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}

    def panoptix(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "panoptix.cli", *args], cwd=elsewhere, env=env,
                             capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    where = subprocess.run([sys.executable, "-c", "import panoptix; print(panoptix.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(target))                  # the installed copy, not the repository's
    listed = panoptix("config", "list")
    assert "panoptic_fpn_tiny" in listed and "ciae_tiny" in listed
    demo = panoptix("demo", "--out", "run", "--train", "12", "--val", "4", "--size", "64", "--overlays", "2",
                    "solver.max_iter=20", "engine.eval_period=0")
    assert "Things" in demo and (elsewhere / "run" / "pq_results.json").is_file()
    assert (elsewhere / "run" / "train" / "model_final.pth").is_file()
