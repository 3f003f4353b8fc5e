"""Input folders: same-stem files get their own ids and files (and one line says so); sub-folders
are entered with --recursive, else one line says they were skipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from panoptix.cli import main
from panoptix.engine.checkpoint import last_checkpoint
from panoptix.engine.image_files import list_images, output_names


def test_output_names_are_stems_unless_they_collide(tmp_path):
    files = [tmp_path / "a.jpg", tmp_path / "a.png", tmp_path / "b.jpg", tmp_path / "sub" / "a.jpg"]
    names, notes = output_names(files, tmp_path)
    assert names == ["a_jpg", "a_png", "b", "sub_a_jpg"]
    assert len(notes) == 1 and "3 inputs share the stem 'a'" in notes[0]


def _folder(tmp_path: Path, synth_val) -> Path:
    src = sorted(synth_val["image_dir"].iterdir())
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    Image.open(src[0]).save(d / "a.jpg", quality=95)
    Image.open(src[1]).save(d / "a.png")                       # a different picture with the same stem
    Image.open(src[2]).save(d / "sub" / "c.png")
    return d


def test_same_stem_inputs_get_their_own_ids_and_files(trained_tiny, synth_val, tmp_path, capsys):
    d = _folder(tmp_path, synth_val)
    out = tmp_path / "out"
    assert main(["predict", "--weights", str(last_checkpoint(trained_tiny)), "--input", str(d),
                 "--output", str(out), "--strict"]) == 0            # a sub-folder not entered is no failure
    err = capsys.readouterr().err
    assert err.count("share the stem 'a'") == 1
    assert err.count("sub-folder") == 1 and "note: 1 sub-folder(s) not entered: sub; --recursive" in err
    summary = json.loads((out / "predict_summary.json").read_text())
    assert summary["skipped"] == [] and len(summary["notes"]) == 2
    data = json.loads((out / "panoptic_pred.json").read_text())
    ids = sorted(a["image_id"] for a in data["annotations"])
    assert ids == ["a_jpg", "a_png"]
    assert sorted(a["file_name"] for a in data["annotations"]) == ["a_jpg.png", "a_png.png"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a_jpg.png", "a_png.png"]
    overlays = [np.asarray(Image.open(out / "overlays" / f"{i}.png")) for i in ids]
    assert not np.array_equal(overlays[0], overlays[1])       # each overlay shows its own picture


def test_recursive_takes_sub_folders(trained_tiny, synth_val, tmp_path):
    d = _folder(tmp_path, synth_val)
    listing = list_images(d, recursive=True)
    assert [p.relative_to(d).as_posix() for p in listing.files] == ["a.jpg", "a.png", "sub/c.png"]
    out = tmp_path / "out"
    assert main(["predict", "--weights", str(last_checkpoint(trained_tiny)), "--input", str(d), "--recursive",
                 "--output", str(out), "--no-overlays"]) == 0
    data = json.loads((out / "panoptic_pred.json").read_text())
    assert sorted(str(a["image_id"]) for a in data["annotations"]) == ["a_jpg", "a_png", "c"]
