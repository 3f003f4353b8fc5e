"""``panoptix.load(weights)``: a trained model as a callable on images, returning results that know
their category names, draw themselves and write themselves as COCO panoptic.

    predictor = panoptix.load("runs/demo/train")          # a run folder or a checkpoint file
    result = predictor("street.jpg")                       # a path, PIL image, array or tensor
    result.segments[0]["name"], result.overlay(labels=True), result.to_coco(image_id=1)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from panoptix.data.meta import DatasetMeta
from panoptix.data.png import id2rgb, read_image
from panoptix.data.sample import bbox_of_mask
from panoptix.engine.predictor import Predictor
from panoptix.structures import PanopticResult

ImageLike = str | Path | np.ndarray | torch.Tensor | Any  # Any: a PIL image


class Prediction:
    """One image's panoptic result with its categories.

    Attributes:
        ids: (H, W) int32 segment ids at the image's size; 0 is VOID.
        segments: one dict per segment: ``id``, ``category_id``, ``name``, ``isthing``, ``score``, ``area``.
        image: the input as given (an array or tensor in the input contract; drawn by `overlay`).
        result: the system's `PanopticResult` (logits, instances).
    """

    def __init__(self, result: PanopticResult, meta: DatasetMeta, image: np.ndarray | torch.Tensor) -> None:
        self.result, self.meta, self.image = result, meta, image
        self.ids = result.ids_numpy()
        self.segments = [{**s.to_json(), "name": meta.by_id[s.category_id].name} for s in result.segments]

    def overlay(self, labels: bool = False, scale: int = 1, legend: bool = False) -> np.ndarray:
        """(H, W, 3) uint8: the segments in their category colours over the image, boundaries white,
        VOID hatched; ``labels`` writes category names, ``scale`` upscales, ``legend`` adds one below."""
        from panoptix.viz import annotate

        return annotate(_display(self.image), self.ids, self.result.segments, self.meta, labels, scale, legend)

    def to_coco(self, image_id: Any = 0, file_name: str | None = None) -> dict[str, Any]:
        """The COCO panoptic annotation of this image (``segments_info`` with ``bbox`` and ``area``);
        write `png` under ``file_name`` beside it."""
        infos = []
        for seg in self.segments:
            mask = self.ids == seg["id"]
            infos.append({"id": seg["id"], "category_id": seg["category_id"], "iscrowd": 0,
                          "bbox": list(bbox_of_mask(mask)), "area": int(mask.sum()), "score": seg["score"]})
        return {"image_id": image_id, "file_name": file_name or f"{image_id}.png", "segments_info": infos}

    def png(self) -> np.ndarray:
        """(H, W, 3) uint8: the ids in COCO's PNG encoding (id = R + 256 G + 256^2 B)."""
        return id2rgb(self.ids)

    def __repr__(self) -> str:
        names = ", ".join(s["name"] for s in self.segments[:8]) + (", ..." if len(self.segments) > 8 else "")
        return f"Prediction({self.ids.shape[1]}x{self.ids.shape[0]}, {len(self.segments)} segments: {names})"


class ImagePredictor:
    """A trained system as a function of images: ``predictor(image)`` -> `Prediction`, a list -> a list.

    An image is a file path, a PIL image, an (H, W, 3) array or a (3, H, W) tensor, uint8 or float in
    0..1 (`panoptix.image_input`).
    """

    def __init__(self, predictor: Predictor, meta: DatasetMeta) -> None:
        self.predictor, self.meta = predictor, meta

    def __call__(self, images: ImageLike | Sequence[ImageLike]) -> Prediction | list[Prediction]:
        single = not isinstance(images, (list, tuple))
        arrays = [_as_array(im) for im in ([images] if single else images)]
        results = self.predictor(arrays)
        out = [Prediction(r, self.meta, a) for r, a in zip(results, arrays)]
        return out[0] if single else out

    @property
    def categories(self) -> list[dict[str, Any]]:
        return [{"id": c.id, "name": c.name, "isthing": bool(c.isthing)} for c in self.meta.categories]


def _as_array(image: ImageLike) -> np.ndarray | torch.Tensor:
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return image
    if hasattr(image, "convert"):  # a PIL image
        return np.asarray(image.convert("RGB"))
    raise TypeError(f"an image is a path, a PIL image, an array or a tensor; got {type(image).__name__}")


def _display(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """(H, W, 3) uint8 of an input image, for overlays (converted only when one is drawn)."""
    from panoptix.image_input import to_chw, to_unit_float

    chw = to_unit_float([to_chw(image, "cpu")])[0]
    return (chw.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)


def load(weights: str | Path, device: str = "auto", batch_size: int = 4, overrides: Sequence[str] = (),
         imports: Sequence[str] = ()) -> ImagePredictor:
    """An `ImagePredictor` from a checkpoint, or a run folder (its ``model_final.pth``, else its last
    checkpoint). The checkpoint's stored config and categories are used; ``overrides`` change them."""
    from panoptix.engine.build import load_predictor

    predictor, meta = load_predictor(weights, None, overrides, batch_size, device, imports)
    return ImagePredictor(predictor, meta)
