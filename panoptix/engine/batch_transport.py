"""Training batches from DataLoader workers as pickled NumPy arrays instead of shared-memory tensors.

Why: a worker hands each tensor to the training process through shared memory, one file
descriptor passed and mapped per tensor. A CPU batch of small tensors (the demo's: 4 images of
128 px and 9 target tensors each, about 40 in all) then costs the training process about 8 ms to
receive, 3% of its 0.26 s step; the same arrays pickled by value arrive in about 2 ms. Only for
CPU training: a CUDA loader pins its tensors in memory, which this would bypass.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# the dtypes a tensor and a NumPy array share without a copy either way (not bfloat16)
_SHARED_DTYPES = {torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                  torch.float16, torch.float32, torch.float64}


@dataclass
class PackedTensor:
    """A CPU tensor's data as a NumPy array, marked so that only tensors become tensors again."""

    array: np.ndarray


def pack_tensors(obj: Any) -> Any:
    """``obj`` (nested lists, tuples and dicts) with every CPU tensor of a NumPy dtype packed."""
    if isinstance(obj, torch.Tensor) and obj.device.type == "cpu" and obj.dtype in _SHARED_DTYPES:
        return PackedTensor(obj.numpy())
    if isinstance(obj, dict):
        return {k: pack_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(pack_tensors(v) for v in obj)
    return obj


def unpack_tensors(obj: Any) -> Any:
    """The inverse of :func:`pack_tensors` (the tensors share the arrays' memory)."""
    if isinstance(obj, PackedTensor):
        return torch.from_numpy(obj.array)
    if isinstance(obj, dict):
        return {k: unpack_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(unpack_tensors(v) for v in obj)
    return obj


class UnpackedBatches:
    """Iterates a loader whose collate function packs its batches, yielding them unpacked."""

    def __init__(self, loader: Iterable[Any]):
        self.loader = loader

    def __iter__(self) -> Iterator[Any]:
        return (unpack_tensors(batch) for batch in self.loader)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]
