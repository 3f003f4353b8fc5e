"""Input folders of ``predict`` and ``pseudo-label``: which files are images, and the unique name
each one's outputs get, so that no two inputs write the same file or share an image id."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from panoptix.jsonio import load_json

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Skipped:
    """A file of the input that was not predicted, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: skipped, {self.reason}"

    def to_json(self) -> dict[str, str]:
        return {"file": str(self.path), "reason": self.reason}


@dataclass
class ImageListing:
    """The images of an input (sorted), the other files skipped, the sub-folders not entered, and
    the folder that names are relative to."""

    files: list[Path]
    skipped: list[Skipped] = field(default_factory=list)
    root: Path | None = None
    folders: list[Path] = field(default_factory=list)

    def folders_note(self) -> list[str]:
        """One line for all sub-folders not entered (none when there are none)."""
        if not self.folders:
            return []
        names = [p.name for p in self.folders]
        shown = ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
        return [f"{len(names)} sub-folder(s) not entered: {shown}; --recursive enters them"]


def list_images(path: str | Path, recursive: bool = False) -> ImageListing:
    """One image file, or the image files of a folder (its sub-folders too with ``recursive``).

    A file counts as an image by its suffix (``IMAGE_SUFFIXES``); whether it decodes is found out
    when it is read. Other files are listed as skipped, and sub-folders, when not ``recursive``,
    as not entered.
    """
    path = Path(path)
    if path.is_file():
        return ImageListing([path], [], path.parent)
    if not path.is_dir():
        raise FileNotFoundError(f"input not found: {path}")
    entries = sorted(path.rglob("*") if recursive else path.iterdir())
    files = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    skipped = [Skipped(p, f"not an image file (suffix {p.suffix or 'none'!r}; images are "
                          f"{', '.join(IMAGE_SUFFIXES)})")
               for p in entries if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES]
    folders = [] if recursive else [p for p in entries if p.is_dir()]
    if not files:
        raise FileNotFoundError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)})"
                                + ("; --recursive looks in sub-folders too" if folders else ""))
    return ImageListing(files, skipped, path, folders)


def output_names(files: Sequence[Path], root: Path | None = None) -> tuple[list[str], list[str]]:
    """(a unique output name per file, one line per group of files that share a stem).

    A file's name is its stem (``a.jpg`` -> ``a``) unless another file has the same stem; each of
    those is named by its path below ``root`` with separators and dots as underscores
    (``a.jpg`` -> ``a_jpg``, ``sub/a.png`` -> ``sub_a_png``).
    """
    by_stem: dict[str, list[Path]] = {}
    for f in files:
        by_stem.setdefault(f.stem, []).append(f)
    names, notes = [], []
    for f in files:
        group = by_stem[f.stem]
        if len(group) == 1:
            names.append(f.stem)
            continue
        names.append(_flat(f, root))
        if f is group[0]:
            notes.append(f"{len(group)} inputs share the stem {f.stem!r} ({', '.join(p.name for p in group)}); "
                         f"each is named by its path instead ({', '.join(_flat(p, root) for p in group)})")
    return names, notes


def _flat(f: Path, root: Path | None) -> str:
    rel = f.relative_to(root) if root is not None and f.is_relative_to(root) else Path(f.name)
    return rel.as_posix().replace("/", "_").replace(".", "_")


def image_ids_from_gt(gt_json: str | Path) -> dict[str, Any]:
    """Image file name and stem -> image id, from a COCO panoptic JSON's ``images`` (or
    ``annotations``); look a file up by its name first, then by its stem."""
    data = load_json(gt_json)
    entries = data.get("images") or data.get("annotations") or []
    key = "id" if data.get("images") else "image_id"
    ids = {Path(e["file_name"]).stem: e[key] for e in entries}
    ids.update({Path(e["file_name"]).name: e[key] for e in entries})
    return ids


__all__ = ["IMAGE_SUFFIXES", "ImageListing", "Skipped", "image_ids_from_gt", "list_images", "output_names"]
