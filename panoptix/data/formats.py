"""Dataset formats on disk: COCO panoptic (read + write), Cityscapes panoptic, ADE20K.

A reader returns a `DatasetMeta` and a list of `PanopticRecord`s (paths and segments, no pixels);
`read_sample` turns a record into a validated `PanopticSample`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from panoptix.data.errors import PanopticFormatError
from panoptix.data.meta import Category, DatasetMeta
from panoptix.data.png import read_id_png, read_image, write_id_png
from panoptix.data.sample import PanopticSample, Segment, segments_from_ids
from panoptix.data.validation import check_json_segments, check_png_segments, resolve_inside
from panoptix.jsonio import load_json


@dataclass
class PanopticRecord:
    """Where one annotated image lies on disk, and its JSON segments.

    ``png_path`` holds the segment-id PNG; ``image_path`` the RGB image (None when unknown).
    ``label_png`` marks a semantic label PNG (ADE20K: pixel value = category id, 0 = VOID)
    instead of an RGB-encoded panoptic PNG.
    """

    image_id: Any
    file_name: str
    png_path: Path
    image_path: Path | None
    segments: list[Segment]
    height: int | None = None
    width: int | None = None
    label_png: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- COCO panoptic
def load_coco_panoptic(json_path: str | Path, png_dir: str | Path | None = None,
                       image_dir: str | Path | None = None,
                       meta: DatasetMeta | None = None) -> tuple[DatasetMeta, list[PanopticRecord]]:
    """Read a COCO panoptic annotation JSON and its PNG folder.

    Args:
        json_path: ``panoptic_*.json`` with ``annotations`` (and ``categories`` unless ``meta``).
        png_dir: folder of segment-id PNGs; defaults to ``json_path`` without ``.json``.
        image_dir: folder of RGB images named by the ``images`` entries (optional).
        meta: categories to check against, for prediction files that carry none.

    Checks everything the JSON alone can tell: fields, unknown categories, duplicate ids, files
    that are missing or that escape their folder. Pixel-level checks happen in `read_sample`.
    """
    json_path = Path(json_path)
    data = load_json(json_path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise PanopticFormatError(f"{json_path}: expected a JSON object with an 'annotations' list")
    if meta is None:
        if "categories" not in data:
            raise PanopticFormatError(f"{json_path}: no 'categories' in the JSON and no categories given")
        meta = DatasetMeta.from_categories(data["categories"], name=str(json_path))
    png_dir = Path(png_dir) if png_dir is not None else json_path.with_suffix("")
    if not png_dir.is_dir():
        raise PanopticFormatError(f"{png_dir}: PNG folder not found")
    images = {}
    for img in data.get("images", []):
        images[img["id"]] = img
    records: list[PanopticRecord] = []
    seen_images: set = set()
    for i, ann in enumerate(data["annotations"]):
        where = f"{json_path}: annotation #{i}"
        for key in ("image_id", "file_name", "segments_info"):
            if key not in ann:
                raise PanopticFormatError(f"{where} lacks '{key}'")
        image_id = ann["image_id"]
        if image_id in seen_images:
            raise PanopticFormatError(f"{where}: image_id {image_id!r} is annotated twice")
        seen_images.add(image_id)
        where = f"{json_path}: image {image_id!r}"
        segments = check_json_segments(ann["segments_info"], meta, where)
        png_path = resolve_inside(png_dir, ann["file_name"], where)
        if not png_path.is_file():
            raise PanopticFormatError(f"{where}: panoptic PNG {png_path} not found")
        info = images.get(image_id, {})
        image_path = None
        if image_dir is not None:
            name = info.get("file_name") or Path(ann["file_name"]).with_suffix(".jpg").name
            image_path = resolve_inside(Path(image_dir), name, where)
            if not image_path.is_file():
                raise PanopticFormatError(f"{where}: image {image_path} not found")
        records.append(PanopticRecord(image_id, info.get("file_name", ann["file_name"]), png_path, image_path,
                                      segments, info.get("height"), info.get("width")))
    return meta, records


def read_sample(record: PanopticRecord, meta: DatasetMeta, load_image: bool = True,
                validate: bool = True) -> PanopticSample:
    """Decode a record's PNG (and image), checking the PNG against the JSON segments."""
    where = f"{record.png_path} (image {record.image_id!r})"
    if record.label_png:
        ids = read_label_png(record.png_path)
        segments = segments_from_ids(ids, {int(v): int(v) for v in np.unique(ids) if v != 0})
        unknown = [s.category_id for s in segments if s.category_id not in meta]
        if unknown:
            raise PanopticFormatError(f"{where}: label values {unknown} are not categories of {meta.name}")
    else:
        ids = read_id_png(record.png_path)
        segments = record.segments
        if validate:
            check_png_segments(ids, segments, where)
    if record.height is not None and record.width is not None and ids.shape != (record.height, record.width):
        raise PanopticFormatError(f"{where}: annotation is {ids.shape[1]}x{ids.shape[0]} (WxH) but the "
                                  f"JSON says {record.width}x{record.height}")
    image = None
    if load_image and record.image_path is not None:
        image = read_image(record.image_path)
        if image.shape[:2] != ids.shape:
            raise PanopticFormatError(f"{where}: image {record.image_path} is {image.shape[1]}x{image.shape[0]} "
                                      f"but its annotation is {ids.shape[1]}x{ids.shape[0]} (WxH)")
    return PanopticSample(ids=ids, segments=list(segments), image=image, image_id=record.image_id,
                          file_name=record.file_name)


def write_coco_panoptic(json_path: str | Path, png_dir: str | Path, meta: DatasetMeta,
                        entries: Iterable[tuple[Any, str, np.ndarray, Sequence[dict[str, Any]]]],
                        images: Sequence[dict[str, Any]] | None = None) -> None:
    """Write a COCO panoptic dataset or prediction set.

    Args:
        entries: ``(image_id, png_file_name, ids HxW, segments_info)`` per image; ``segments_info``
            are JSON dicts (at least ``id`` and ``category_id``; anything else is kept).
        images: optional COCO ``images`` list to store beside the annotations.
    """
    png_dir = Path(png_dir)
    png_dir.mkdir(parents=True, exist_ok=True)
    annotations = []
    for image_id, file_name, ids, segments_info in entries:
        write_id_png(png_dir / file_name, ids)
        annotations.append({"image_id": image_id, "file_name": file_name, "segments_info": list(segments_info)})
    data: dict[str, Any] = {"annotations": annotations, "categories": meta.to_json()}
    if images is not None:
        data["images"] = list(images)
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(data, f)


# --------------------------------------------------------------------------- Cityscapes
def load_cityscapes_panoptic(root: str | Path, split: str = "val") -> tuple[DatasetMeta, list[PanopticRecord]]:
    """Cityscapes panoptic as written by cityscapesscripts' ``createPanopticImgs`` (``csCreatePanopticImgs``).

    Layout: ``root/gtFine/cityscapes_panoptic_{split}.json`` and its PNG folder (or the converter's
    ``--use-train-id`` output, ``cityscapes_panoptic_{split}_trainId.json``, when only that exists),
    images at ``root/leftImg8bit/{split}/{city}/{image_id}_leftImg8bit.png``. The image path is built
    from the image id, as detectron2 does: the converter's ``images[].file_name`` is
    ``{image_id}_gtFine_leftImg8bit.png``, a name no Cityscapes image has.
    """
    root = Path(root)
    json_path = _cityscapes_json(root, split)
    meta, records = load_coco_panoptic(json_path, json_path.with_suffix(""))
    image_root = root / "leftImg8bit" / split
    for rec in records:
        image_id = str(rec.image_id)
        city = image_id.split("_")[0]
        rec.image_path = resolve_inside(image_root, f"{city}/{image_id}_leftImg8bit.png",
                                        f"{json_path}: image {image_id!r}")
        rec.file_name = rec.image_path.name
        if not rec.image_path.is_file():
            raise PanopticFormatError(f"{json_path}: image {image_id!r}: {rec.image_path} not found")
    return meta, records


def _cityscapes_json(root: Path, split: str) -> Path:
    gt = root / "gtFine"
    for name in (f"cityscapes_panoptic_{split}.json", f"cityscapes_panoptic_{split}_trainId.json"):
        if (gt / name).is_file():
            return gt / name
    raise PanopticFormatError(f"{gt / f'cityscapes_panoptic_{split}.json'} not found (nor its _trainId variant); "
                              f"make it with cityscapesscripts' converter: csCreatePanopticImgs --dataset-folder {gt} "
                              f"--output-folder {gt} --set-names {split}")


# --------------------------------------------------------------------------- ADE20K
ADE20K_NUM_CLASSES = 150


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def load_ade20k(root: str | Path, split: str = "validation",
                num_classes: int = ADE20K_NUM_CLASSES) -> tuple[DatasetMeta, list[PanopticRecord]]:
    """ADE20K scene parsing (``ADEChallengeData2016``): ``images/{split}/*.jpg`` and
    ``annotations/{split}/*.png`` whose pixel value is the class (1..150), 0 = ignore.

    Category names come from ``objectInfo150.csv``/``.txt`` in ``root`` when present; every class
    is stuff (scene parsing has no instances), so each class present in an image is one segment.

    The same layout with a ``categories.json`` in ``root`` (a COCO category list; pixel value =
    category id) is any dataset's label folder: what ``panoptix pseudo-label`` writes. Images may then
    be of any common format.
    """
    root = Path(root)
    img_dir, ann_dir = root / "images" / split, root / "annotations" / split
    for d in (img_dir, ann_dir):
        if not d.is_dir():
            raise PanopticFormatError(f"{d}: ADE20K folder not found (expected ADEChallengeData2016 layout)")
    if (root / "categories.json").is_file():
        meta = DatasetMeta.from_json(root / "categories.json")
        suffixes = IMAGE_SUFFIXES
    else:
        names = _ade_names(root, num_classes)
        meta = DatasetMeta([Category(i + 1, n, False, _ade_color(i + 1)) for i, n in enumerate(names)],
                           name=f"ade20k:{root}")
        suffixes = (".jpg",)
    records = []
    for png in sorted(ann_dir.glob("*.png")):
        image = next((img_dir / f"{png.stem}{sfx}" for sfx in suffixes if (img_dir / f"{png.stem}{sfx}").is_file()),
                     None)
        if image is None:
            raise PanopticFormatError(f"{png}: image {png.stem}{'|'.join(suffixes)} not found in {img_dir}")
        records.append(PanopticRecord(png.stem, image.name, png, image, [], label_png=True))
    if not records:
        raise PanopticFormatError(f"{ann_dir}: no annotation PNGs")
    return meta, records


def _ade_names(root: Path, num_classes: int) -> list[str]:
    for fname in ("objectInfo150.csv", "objectInfo150.txt"):
        path = root / fname
        if path.is_file():
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            sep = "," if fname.endswith(".csv") else "\t"
            names = [ln.split(sep)[-1].split(";")[0].strip() for ln in lines[1:]]
            if len(names) != num_classes:
                raise PanopticFormatError(f"{path}: lists {len(names)} classes, expected {num_classes}")
            return names
    return [f"class_{i}" for i in range(1, num_classes + 1)]


def _ade_color(class_id: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(1000 + class_id)
    return tuple(int(v) for v in rng.integers(30, 256, size=3))


def read_label_png(path: Path) -> np.ndarray:
    """(H, W) int32 values of a single-channel label PNG."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise PanopticFormatError(f"{path}: label PNG has mode {img.mode!r}; expected single-channel")
            return np.asarray(img).astype(np.int32)
    except (UnidentifiedImageError, OSError) as err:
        raise PanopticFormatError(f"{path}: cannot decode label PNG ({err})") from err
