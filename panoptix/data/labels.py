"""Semantic label PNGs and label folders (ADE20K's layout, any dataset's categories).

A label PNG holds one category id per pixel (ADE20K's convention: 0 = unlabelled, ignored in
training and evaluation); 8-bit when every id fits, 16-bit otherwise. A label folder is
``images/{split}/`` + ``annotations/{split}/*.png`` + ``categories.json`` (a COCO category list), which
`panoptix.data.formats.load_ade20k` reads (``format: ade20k``): what ``panoptix predict`` writes for a
scene parsing system and ``panoptix pseudo-label`` writes for a student.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from panoptix.data.meta import DatasetMeta

IGNORED = 0  # label PNG value of an unlabelled (or low-confidence) pixel


def category_map(semantic: torch.Tensor | np.ndarray, categories: Sequence[int]) -> np.ndarray:
    """(H, W) contiguous class indices (IGNORE_INDEX or any index out of range = ignored) -> (H, W)
    int32 category ids, 0 where ignored."""
    semantic = np.asarray(semantic.cpu() if isinstance(semantic, torch.Tensor) else semantic).astype(np.int64)
    lut = np.asarray(list(categories), dtype=np.int32)
    valid = (semantic >= 0) & (semantic < len(lut))
    return np.where(valid, lut[np.clip(semantic, 0, len(lut) - 1)], IGNORED).astype(np.int32)


def pseudo_label(probabilities: torch.Tensor, categories: Sequence[int], threshold: float = 0.5) -> np.ndarray:
    """Hard pseudo-labels (spec section 10): the argmax category of (K, H, W) class probabilities, and
    `IGNORED` (0) exactly where the largest probability is below ``threshold``."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a probability in 0..1, got {threshold}")
    confidence, index = probabilities.max(dim=0)
    labels = category_map(index, categories)
    labels[(confidence < threshold).cpu().numpy()] = IGNORED
    return labels


def write_label_png(path: str | Path, labels: np.ndarray) -> None:
    """(H, W) category ids -> a single-channel PNG (8-bit when the ids fit, else 16-bit)."""
    labels = np.asarray(labels)
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 65535:
        raise ValueError("label PNG values must lie in 0..65535")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if labels.max(initial=0) <= 255:
        Image.fromarray(labels.astype(np.uint8), mode="L").save(path)
    else:
        Image.fromarray(labels.astype(np.uint16)).save(path)


def write_categories(root: str | Path, meta: DatasetMeta) -> Path:
    """``root/categories.json``: the label folder's categories (what the label values mean)."""
    path = Path(root) / "categories.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"categories": meta.to_json()}, indent=1))
    return path


__all__ = ["IGNORED", "category_map", "pseudo_label", "write_label_png", "write_categories"]
