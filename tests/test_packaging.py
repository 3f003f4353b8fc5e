"""A real package: the wheel carries the bundled configs, and panoptix installed from it (not
editable) into a fresh venv lists them and runs a short demo from another directory, through its
console script."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
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
    # a fresh venv with the wheel installed (not editable); its dependencies come from this venv's
    # site-packages through a .pth line (a test never downloads torch), which runs none of its .pth files
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True, timeout=120)
    site = next(fresh.glob("lib/python3*/site-packages"))
    (site / "_project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(fresh / "bin" / "python"), "install", "--no-deps",
                    "--no-index", "-q", str(wheel)], check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"

    def panoptix(*args: str) -> str:
        out = subprocess.run([str(fresh / "bin" / "panoptix"), *args], cwd=elsewhere, env=env,
                             capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    where = subprocess.run([str(fresh / "bin" / "python"), "-c", "import panoptix; print(panoptix.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site))                    # the installed copy, not the repository's
    listed = panoptix("config", "list")
    assert "panoptic_fpn_tiny" in listed and "ciae_tiny" in listed
    demo = panoptix("demo", "--out", "run", "--train", "12", "--val", "4", "--size", "64", "--overlays", "2",
                    "solver.max_iter=20", "engine.eval_period=0")
    assert "Things" in demo and (elsewhere / "run" / "pq_results.json").is_file()
    assert (elsewhere / "run" / "train" / "model_final.pth").is_file()
