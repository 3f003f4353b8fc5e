"""Batched inference: in-memory PQ evaluation of a dataset, and COCO panoptic prediction files.

Inputs are images of any size in the one input contract of `panoptix.image_input` ((H, W, 3)
arrays or (3, H, W) tensors, uint8 or float in 0..1), the same as ``model(images)`` takes; the
model resizes, pads and maps results back.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from panoptix.data.datasets import PanopticDataset
from panoptix.data.errors import PanopticFormatError
from panoptix.data.formats import write_coco_panoptic
from panoptix.data.meta import DatasetMeta
from panoptix.data.png import read_image
from panoptix.engine import distributed as dist
from panoptix.engine.image_files import Skipped, image_ids_from_gt, list_images, output_names
from panoptix.engine.tasks import task_of
from panoptix.errors import PanoptixError
from panoptix.image_input import as_image_tensors, to_chw
from panoptix.structures import PanopticResult


def to_tensor(image: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """One image of the input contract (`panoptix.image_input`) -> (3, H, W) float in 0..1 on ``device``."""
    return as_image_tensors([image], device)[0]


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block (BatchNorm on its running statistics, no dropout), its
    previous mode restored after: how every prediction runs, whoever wraps the model."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


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
        out: list[PanopticResult] = []
        with evaluating(self.model):
            for i in range(0, len(images), self.batch_size):
                # layout and device here; the model itself reads uint8 or checks the floats' range
                batch = [to_chw(im, self.device, i + k) for k, im in enumerate(images[i: i + self.batch_size])]
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                    out.extend(self.model(batch))
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


def evaluate_dataset(predictor: Predictor, dataset: PanopticDataset, indices: Sequence[int] | None = None,
                     progress: bool = False) -> dict[str, Any]:
    """PQ of ``predictor`` on ``dataset`` (or the given indices), sharded over ranks and all-reduced;
    or what the model's task evaluates (`panoptix.engine.tasks`: mIoU, pixel accuracy and the ADE
    score for scene parsing)."""
    indices = list(range(len(dataset))) if indices is None else list(indices)
    mine = indices[dist.get_rank()::dist.get_world_size()]
    evaluator = task_of(predictor.model).evaluator(dataset.meta)
    bar = tqdm(total=len(mine), desc="evaluate", unit="img", disable=not progress, leave=False)
    for batch in _batches(mine, predictor.batch_size):
        samples = [dataset[i] for i in batch]
        for sample, result in zip(samples, predictor([s.image for s in samples])):
            evaluator.add(sample, result)
        bar.update(len(batch))
    bar.close()
    return evaluator.all_reduce().summary()


@dataclass
class PredictionRun:
    """What `predict_files` wrote: the prediction JSON, how many images, and the files it skipped."""

    json_path: Path
    written: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    labels_dir: Path | None = None  # the task's extra files (label PNGs of a scene parsing system)
    notes: list[str] = field(default_factory=list)  # inputs renamed so that none overwrites another


def _warn(skipped: Skipped) -> None:
    tqdm.write(f"warning: {skipped}", file=sys.stderr)   # tqdm.write keeps the progress bar intact


def _image_ids(files: Sequence[Path], names: Sequence[str], known: dict[str, Any] | None) -> list[Any]:
    """Each file's image id: ``known[file name]``, else ``known[stem]`` for a file whose stem is its
    own, else its output name (an int when all digits). `PanoptixError` if two files get one id."""
    seen: dict[Any, Path] = {}   # image id -> the file that has it
    for f, name in zip(files, names):
        if known and f.name in known:
            image_id = known[f.name]
        elif known and name == f.stem and f.stem in known:
            image_id = known[f.stem]
        else:
            image_id = int(name) if name.isdigit() else name
        if image_id in seen:
            raise PanoptixError(f"{seen[image_id]} and {f} get the same image id {image_id!r}; rename one")
        seen[image_id] = f
    return list(seen)


def predict_files(predictor: Predictor, meta: DatasetMeta, files: Sequence[Path], out_dir: str | Path,
                  image_ids: dict[str, Any] | None = None, overlays: bool = True, progress: bool = True,
                  warn: Callable[[Skipped], None] = _warn, root: Path | None = None, labels: bool = False,
                  scale: int = 1) -> PredictionRun:
    """Predict ``files`` and write ``out_dir/panoptic_pred.json``, ``panoptic_pred/*.png`` and overlays;
    and the task's extra files (`Task.write_prediction`: for scene parsing ``labels/*.png``, the
    category id per pixel, and ``labels/categories.json``).

    A file that cannot be decoded is skipped with one ``warn`` call and listed in the returned
    `PredictionRun`; everything else is written. Each file's outputs are named by `output_names`
    (its stem, or its path below ``root`` when another file has the same stem: the run's ``notes``
    say so). Image ids come from ``image_ids`` (file name or stem -> id, `image_ids_from_gt`) when
    given, else the output name (an int when it is all digits, as COCO names its files). Overlays
    (`panoptix.viz.annotate`) carry a legend, category names when ``labels``, and are upscaled
    ``scale`` times.
    """
    from PIL import Image

    from panoptix.viz import annotate

    out = Path(out_dir)
    if overlays:
        (out / "overlays").mkdir(parents=True, exist_ok=True)
    run = PredictionRun(out / "panoptic_pred.json")
    names, run.notes = output_names(files, root)
    task = task_of(predictor.model)
    ids = _image_ids(files, names, image_ids)
    entries, images_json = [], []
    batches = list(_batches(zip(files, names, ids), predictor.batch_size))
    for batch in tqdm(batches, desc="predict", unit="batch", disable=not progress):
        readable, images = [], []
        for f, name, image_id in batch:
            try:
                images.append(read_image(f))
                readable.append((f, name, image_id))
            except PanopticFormatError as err:
                run.skipped.append(Skipped(f, f"cannot be decoded ({str(err).removeprefix(f'{f}: ')})"))
                warn(run.skipped[-1])
        for (f, stem, image_id), image, result in zip(readable, images, predictor(images) if images else []):
            ids = result.ids_numpy()
            segs = [s.to_json() for s in result.segments]
            entries.append((image_id, stem + ".png", ids, segs))
            images_json.append({"id": image_id, "file_name": f.name, "height": ids.shape[0], "width": ids.shape[1]})
            if overlays:
                picture = annotate(image, ids, result.segments, meta, labels=labels, scale=scale)
                Image.fromarray(picture).save(out / "overlays" / (stem + ".png"))
            run.labels_dir = task.write_prediction(out, stem, result, meta) or run.labels_dir
    write_coco_panoptic(run.json_path, out / "panoptic_pred", meta, entries, images=images_json)
    if run.labels_dir is not None:
        task.finish_predictions(run.labels_dir, meta)
    run.written = len(entries)
    return run


__all__ = ["Predictor", "PredictionRun", "Skipped", "evaluate_dataset", "predict_files", "list_images",
           "image_ids_from_gt", "to_tensor", "evaluating"]
