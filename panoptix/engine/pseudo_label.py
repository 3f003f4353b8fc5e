"""Teacher-student pseudo-labels (AinnoSeg, Wu et al. 2020; spec section 10, Naive-Student): a teacher's hard labels
on unlabelled images, low-confidence pixels ignored, written as a label folder a student trains on.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from panoptix.data.labels import IGNORED, pseudo_label, write_categories, write_label_png
from panoptix.data.meta import DatasetMeta
from panoptix.data.png import read_image
from panoptix.engine.image_files import output_names
from panoptix.engine.predictor import evaluating, to_tensor

RECORD = "pseudo_labels.json"


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (the teacher checkpoint's identity in the record)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def write_pseudo_labels(tta: Any, meta: DatasetMeta, files: Sequence[Path], out: str | Path, threshold: float = 0.5,
                        split: str = "pseudo", teacher: str | Path | None = None, tta_text: str | None = None,
                        device: str = "cpu", progress: bool = True, root: Path | None = None) -> dict[str, Any]:
    """Label ``files`` with ``tta`` (a `SemanticTTA` over the teacher) into ``out``.

    Writes ``out/images/{split}/`` (copies of the images), ``out/annotations/{split}/*.png`` (category id
    per pixel, 0 where the teacher's averaged probability is below ``threshold``),
    ``out/categories.json`` and the record ``out/pseudo_labels.json`` (teacher path and SHA-256,
    threshold, TTA, counts). The folder is a ``format: ade20k`` dataset with that split. Files are
    named by `output_names` (their stem, or their path below ``root`` where stems collide; the
    record's ``notes`` say so), so that no two inputs write the same label.
    """
    out = Path(out)
    teacher_sha = None if teacher is None else file_sha256(teacher)   # before the long work: a bad path fails now
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    ignored = total = 0
    names, notes = output_names(files, root)
    with evaluating(tta):   # the teacher predicts as `panoptix predict` does (BatchNorm on its running statistics)
        for f, name in tqdm(list(zip(files, names)), desc="pseudo-label", unit="img", disable=not progress):
            image = read_image(f)
            probabilities = tta.probabilities(to_tensor(image, device))
            labels = pseudo_label(probabilities, meta.category_ids, threshold)
            write_label_png(out / "annotations" / split / f"{name}.png", labels)
            shutil.copyfile(f, out / "images" / split / f"{name}{f.suffix}")
            ignored += int((labels == IGNORED).sum())
            total += labels.size
    write_categories(out, meta)
    record = {"teacher": None if teacher is None else str(teacher),
              "teacher_sha256": teacher_sha,
              "threshold": threshold, "tta": tta_text, "split": split, "images": len(files),
              "ignored_fraction": ignored / total if total else 0.0, "notes": notes,
              "dataset": {"format": "ade20k", "root": str(out), "split": split}}
    (out / RECORD).write_text(json.dumps(record, indent=1))
    return record


__all__ = ["write_pseudo_labels", "file_sha256", "RECORD"]
