"""Batched inference: in-memory PQ evaluation of a dataset, and COCO panoptic prediction files.

Inputs are HxWx3 uint8 RGB images of any size; the model resizes, pads and maps results back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from panoptix.data.datasets import PanopticDataset
from panoptix.data.formats import load_json, write_coco_panoptic
from panoptix.data.meta import DatasetMeta
from panoptix.data.png import read_image
from panoptix.engine import distributed as dist
from panoptix.evaluation.panoptic import PanopticEvaluator
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
        amp: float16 autocast (CUDA only).
    """

    def __init__(self, model: nn.Module, device: torch.device | str = "cpu", batch_size: int = 4,
                 amp: bool = False) -> None:
        self.model, self.device = model, torch.device(device)
        self.batch_size = max(1, int(batch_size))
        self.amp = amp and self.device.type == "cuda"

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray | torch.Tensor]) -> list[PanopticResult]:
        was_training = self.model.training
        self.model.eval()
        out: list[PanopticResult] = []
        try:
            for i in range(0, len(images), self.batch_size):
                batch = [to_tensor(im, self.device) for im in images[i: i + self.batch_size]]
                with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
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
    """PQ of ``predictor`` on ``dataset`` (or the given indices), sharded over ranks and all-reduced."""
    indices = list(range(len(dataset))) if indices is None else list(indices)
    mine = indices[dist.get_rank()::dist.get_world_size()]
    evaluator = PanopticEvaluator(dataset.meta)
    bar = tqdm(total=len(mine), desc="evaluate", unit="img", disable=not progress, leave=False)
    for batch in _batches(mine, predictor.batch_size):
        samples = [dataset[i] for i in batch]
        for sample, result in zip(samples, predictor([s.image for s in samples])):
            evaluator.add(sample, result)
        bar.update(len(batch))
    bar.close()
    return evaluator.all_reduce().summary()


def list_images(path: str | Path) -> list[Path]:
    """One image file, or the images of a folder (sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)})")
        return files
    raise FileNotFoundError(f"input not found: {path}")


def image_ids_from_gt(gt_json: str | Path) -> dict[str, Any]:
    """Image file stem -> image id, from a COCO panoptic JSON's ``images`` (or ``annotations``)."""
    data = load_json(gt_json)
    entries = data.get("images") or data.get("annotations") or []
    key = "id" if data.get("images") else "image_id"
    return {Path(e["file_name"]).stem: e[key] for e in entries}


def predict_files(predictor: Predictor, meta: DatasetMeta, files: Sequence[Path], out_dir: str | Path,
                  image_ids: Optional[dict[str, Any]] = None, overlays: bool = True, progress: bool = True
                  ) -> Path:
    """Predict ``files`` and write ``out_dir/panoptic_pred.json``, ``panoptic_pred/*.png`` and overlays.

    Image ids come from ``image_ids`` (file stem -> id) when given, else the stem (as an int when it
    is all digits, as COCO names its files).
    """
    from PIL import Image

    from panoptix.viz import overlay

    out = Path(out_dir)
    if overlays:
        (out / "overlays").mkdir(parents=True, exist_ok=True)
    entries, images_json = [], []
    for batch in tqdm(list(_batches(files, predictor.batch_size)), desc="predict", unit="batch", disable=not progress):
        images = [read_image(f) for f in batch]
        for f, image, result in zip(batch, images, predictor(images)):
            stem = f.stem
            image_id = image_ids.get(stem, stem) if image_ids else (int(stem) if stem.isdigit() else stem)
            ids = result.ids_numpy()
            segs = [s.to_json() for s in result.segments]
            entries.append((image_id, stem + ".png", ids, segs))
            images_json.append({"id": image_id, "file_name": f.name, "height": ids.shape[0], "width": ids.shape[1]})
            if overlays:
                Image.fromarray(overlay(image, ids, result.segments, meta)).save(out / "overlays" / (stem + ".png"))
    json_path = out / "panoptic_pred.json"
    write_coco_panoptic(json_path, out / "panoptic_pred", meta, entries, images=images_json)
    return json_path


__all__ = ["Predictor", "evaluate_dataset", "predict_files", "list_images", "image_ids_from_gt", "to_tensor", "chw_uint8"]
