"""A checkpoint's stored config may name modules to import: they run only when the user names them."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from panoptix.cli import main
from panoptix.engine.build import load_model
from panoptix.engine.checkpoint import last_checkpoint
from panoptix.registry import ConfigError

MARKER_MODULE = "panoptix_test_marker_module"


@pytest.fixture()
def marked_checkpoint(trained_tiny, tmp_path, monkeypatch):
    """The tiny checkpoint with ``imports: [MARKER_MODULE]`` in its config; the module, on sys.path,
    writes ``imported.txt`` when it is imported."""
    marker = tmp_path / "imported.txt"
    (tmp_path / f"{MARKER_MODULE}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MARKER_MODULE, raising=False)
    ckpt = torch.load(last_checkpoint(trained_tiny), weights_only=True)
    ckpt["config"]["imports"] = [MARKER_MODULE]
    path = tmp_path / "marked.pth"
    torch.save(ckpt, path)
    yield path, marker
    sys.modules.pop(MARKER_MODULE, None)


def test_stored_imports_are_refused_unless_named(marked_checkpoint, synth_val, tmp_path, capsys):
    path, marker = marked_checkpoint
    image = sorted(synth_val["image_dir"].iterdir())[0]
    args = ["predict", "--weights", str(path), "--input", str(image), "--no-overlays"]
    assert main([*args, "--output", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and MARKER_MODULE in err[0] and f"--import {MARKER_MODULE}" in err[0]
    assert not marker.exists() and MARKER_MODULE not in sys.modules
    with pytest.raises(ConfigError, match=f"imports=\\['{MARKER_MODULE}'\\]"):
        load_model(path, device="cpu")
    assert not marker.exists()
    # named by the user: imported, and the prediction runs
    assert main([*args, "--output", str(tmp_path / "allowed"), "--import", MARKER_MODULE]) == 0
    assert marker.read_text() == "ran"


def test_two_level_ends_follow_the_same_rule(marked_checkpoint, trained_tiny, synth_val, tmp_path, capsys):
    path, marker = marked_checkpoint
    record = tmp_path / "fusion.json"
    record.write_text(json.dumps({"ends": [str(last_checkpoint(trained_tiny)), str(path)], "metric": "pq",
                                  "classes": []}))
    image = sorted(synth_val["image_dir"].iterdir())[0]
    assert main(["predict", "--two-level", str(record), "--input", str(image), "--output", str(tmp_path / "o"),
                 "--no-overlays"]) == 2
    assert f"--import {MARKER_MODULE}" in capsys.readouterr().err
    assert not marker.exists()
