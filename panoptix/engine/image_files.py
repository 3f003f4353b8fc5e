"""Input folders of ``predict`` and ``pseudo-label``: which files are images, and the unique name
each one's outputs get, so that no two inputs write the same file or share an image id."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from panoptix.jsonio import load_json

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Skipped:
    """A file (or sub-folder) of the input that was not predicted, and why."""

    path: Path
    reason: str
    folder: bool = False

    def __str__(self) -> str:
        return f"{self.path}: skipped, {self.reason}"

    def to_json(self) -> dict[str, str]:
        return {"file": str(self.path), "reason": self.reason}


@dataclass
class ImageListing:
    """The images of an input (sorted), the entries skipped, and the folder names are relative to."""

    files: list[Path]
    skipped: list[Skipped] = field(default_factory=list)
    root: Optional[Path] = None

    def __iter__(self):  # ``files, skipped = list_images(...)``
        return iter((self.files, self.skipped))


def list_images(path: str | Path, recursive: bool = False) -> ImageListing:
    """One image file, or the image files of a folder (its sub-folders too with ``recursive``).

    A file counts as an image by its suffix (``IMAGE_SUFFIXES``); whether it decodes is found out
    when it is read. Other files, and sub-folders when not ``recursive``, are listed as skipped.
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
    if not recursive:
        skipped += [Skipped(p, "a sub-folder, not entered (--recursive enters sub-folders)", folder=True)
                    for p in entries if p.is_dir()]
    if not files:
        raise FileNotFoundError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)})"
                                + ("" if recursive else "; --recursive looks in sub-folders too"))
    return ImageListing(files, skipped, path)


def skipped_lines(skipped: Sequence[Skipped]) -> list[str]:
    """One line per skipped file, and one line for all skipped sub-folders."""
    folders = [s.path.name for s in skipped if s.folder]
    lines = [str(s) for s in skipped if not s.folder]
    if folders:
        shown = ", ".join(folders[:5]) + (f" (+{len(folders) - 5} more)" if len(folders) > 5 else "")
        lines.append(f"skipped {len(folders)} sub-folder(s): {shown}; --recursive enters them")
    return lines


def output_names(files: Sequence[Path], root: Optional[Path] = None) -> tuple[list[str], list[str]]:
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


def _flat(f: Path, root: Optional[Path]) -> str:
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


__all__ = ["IMAGE_SUFFIXES", "ImageListing", "Skipped", "image_ids_from_gt", "list_images", "output_names",
           "skipped_lines"]
