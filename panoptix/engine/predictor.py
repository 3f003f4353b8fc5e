"""Batched inference: in-memory PQ evaluation of a dataset, and COCO panoptic prediction files.

Inputs are HxWx3 uint8 RGB images of any size; the model resizes, pads and maps results back.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from panoptix.data.datasets import PanopticDataset
from panoptix.data.errors import PanopticFormatError
from panoptix.data.formats import load_json, write_coco_panoptic
from panoptix.data.labels import category_map, write_categories, write_label_png
from panoptix.data.meta import DatasetMeta
from panoptix.data.png import read_image
from panoptix.engine import distributed as dist
from panoptix.evaluation.panoptic import PanopticEvaluator
from panoptix.evaluation.semantic import SemanticEvaluator
from panoptix.structures import PanopticResult

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def chw_uint8(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB array -> (3, H, W) uint8 tensor (a copy: decoded arrays may be read-only)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def to_tensor(image: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """(H, W, 3) uint8 array or (3, H, W) uint8 tensor -> (3, H, W) float in 0..1 on ``device``."""
    if isinstance(image, np.ndarray):
        image = chw_uint8(image)
    return image.to(device, non_blocking=True).float().div_(255.0)


class Predictor:
    """Runs a panoptic model on batches of images.

    Args:
        model: any system following the detection contract (``model(list[Tensor]) -> list[PanopticResult]``).
        device: where to run.
        batch_size: images per forward pass.
        amp: autocast (CUDA only) with ``amp_dtype`` (``"float16"`` or ``"bfloat16"``).
    """

    def __init__(self, model: nn.Module, device: torch.device | str = "cpu", batch_size: int = 4,
                 amp: bool = False, amp_dtype: str = "float16") -> None:
        self.model, self.device = model, torch.device(device)
        self.batch_size = max(1, int(batch_size))
        self.amp = amp and self.device.type == "cuda"
        self.amp_dtype = getattr(torch, amp_dtype)

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray | torch.Tensor]) -> list[PanopticResult]:
        was_training = self.model.training
        self.model.eval()
        out: list[PanopticResult] = []
        try:
            for i in range(0, len(images), self.batch_size):
                batch = [to_tensor(im, self.device) for im in images[i: i + self.batch_size]]
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                    out.extend(self.model(batch))
        finally:
            self.model.train(was_training)
        return out


def _batches(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def evaluate_dataset(predictor: Predictor, dataset: PanopticDataset, indices: Optional[Sequence[int]] = None,
                     progress: bool = False) -> dict[str, Any]:
    """PQ of ``predictor`` on ``dataset`` (or the given indices), sharded over ranks and all-reduced;
    for a scene parsing system (``model.task == "semantic"``) pixel accuracy, mIoU and the ADE score."""
    indices = list(range(len(dataset))) if indices is None else list(indices)
    mine = indices[dist.get_rank()::dist.get_world_size()]
    semantic = getattr(predictor.model, "task", "panoptic") == "semantic"
    evaluator = SemanticEvaluator.for_meta(dataset.meta) if semantic else PanopticEvaluator(dataset.meta)
    bar = tqdm(total=len(mine), desc="evaluate", unit="img", disable=not progress, leave=False)
    for batch in _batches(mine, predictor.batch_size):
        samples = [dataset[i] for i in batch]
        for sample, result in zip(samples, predictor([s.image for s in samples])):
            evaluator.add(sample, result)
        bar.update(len(batch))
    bar.close()
    return evaluator.all_reduce().summary()


@dataclass(frozen=True)
class Skipped:
    """A file of the input that was not predicted, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: skipped, {self.reason}"

    def to_json(self) -> dict[str, str]:
        return {"file": str(self.path), "reason": self.reason}


def list_images(path: str | Path) -> tuple[list[Path], list[Skipped]]:
    """One image file, or the files of a folder (sorted): the images, and the other files skipped.

    A file counts as an image by its suffix (``IMAGE_SUFFIXES``); whether it decodes is found out
    when it is read. Sub-folders are not entered.
    """
    path = Path(path)
    if path.is_file():
        return [path], []
    if path.is_dir():
        entries = sorted(p for p in path.iterdir() if p.is_file())
        files = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
        skipped = [Skipped(p, f"not an image file (suffix {p.suffix or 'none'!r}; images are "
                              f"{', '.join(IMAGE_SUFFIXES)})")
                   for p in entries if p.suffix.lower() not in IMAGE_SUFFIXES]
        if not files:
            raise FileNotFoundError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)})")
        return files, skipped
    raise FileNotFoundError(f"input not found: {path}")


def image_ids_from_gt(gt_json: str | Path) -> dict[str, Any]:
    """Image file stem -> image id, from a COCO panoptic JSON's ``images`` (or ``annotations``)."""
    data = load_json(gt_json)
    entries = data.get("images") or data.get("annotations") or []
    key = "id" if data.get("images") else "image_id"
    return {Path(e["file_name"]).stem: e[key] for e in entries}


@dataclass
class PredictionRun:
    """What `predict_files` wrote: the prediction JSON, how many images, and the files it skipped."""

    json_path: Path
    written: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    labels_dir: Optional[Path] = None  # label PNGs of a scene parsing system


def _warn(skipped: Skipped) -> None:
    tqdm.write(f"warning: {skipped}", file=sys.stderr)   # tqdm.write keeps the progress bar intact


def predict_files(predictor: Predictor, meta: DatasetMeta, files: Sequence[Path], out_dir: str | Path,
                  image_ids: Optional[dict[str, Any]] = None, overlays: bool = True, progress: bool = True,
                  warn: Callable[[Skipped], None] = _warn) -> PredictionRun:
    """Predict ``files`` and write ``out_dir/panoptic_pred.json``, ``panoptic_pred/*.png`` and overlays;
    for a scene parsing system also ``labels/*.png`` (category id per pixel) and ``labels/categories.json``.

    A file that cannot be decoded is skipped with one ``warn`` call and listed in the returned
    `PredictionRun`; everything else is written. Image ids come from ``image_ids`` (file stem -> id)
    when given, else the stem (as an int when it is all digits, as COCO names its files).
    """
    from PIL import Image

    from panoptix.viz import overlay

    out = Path(out_dir)
    if overlays:
        (out / "overlays").mkdir(parents=True, exist_ok=True)
    run = PredictionRun(out / "panoptic_pred.json")
    entries, images_json = [], []
    for batch in tqdm(list(_batches(files, predictor.batch_size)), desc="predict", unit="batch", disable=not progress):
        readable, images = [], []
        for f in batch:
            try:
                images.append(read_image(f))
                readable.append(f)
            except PanopticFormatError as err:
                run.skipped.append(Skipped(f, f"cannot be decoded ({str(err).removeprefix(f'{f}: ')})"))
                warn(run.skipped[-1])
        for f, image, result in zip(readable, images, predictor(images) if images else []):
            stem = f.stem
            image_id = image_ids.get(stem, stem) if image_ids else (int(stem) if stem.isdigit() else stem)
            ids = result.ids_numpy()
            segs = [s.to_json() for s in result.segments]
            entries.append((image_id, stem + ".png", ids, segs))
            images_json.append({"id": image_id, "file_name": f.name, "height": ids.shape[0], "width": ids.shape[1]})
            if overlays:
                Image.fromarray(overlay(image, ids, result.segments, meta)).save(out / "overlays" / (stem + ".png"))
            if "semantic" in result.extra:  # a scene parsing system: its label map too
                labels = category_map(result.extra["semantic"], meta.category_ids)
                write_label_png(out / "labels" / (stem + ".png"), labels)
                run.labels_dir = out / "labels"
    write_coco_panoptic(run.json_path, out / "panoptic_pred", meta, entries, images=images_json)
    if run.labels_dir is not None:
        write_categories(run.labels_dir, meta)
    run.written = len(entries)
    return run


__all__ = ["Predictor", "PredictionRun", "Skipped", "evaluate_dataset", "predict_files", "list_images",
           "image_ids_from_gt", "to_tensor", "chw_uint8"]
