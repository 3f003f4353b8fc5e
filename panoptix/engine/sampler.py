"""A replayable training stream: position ``g`` of the stream always yields the same sample.

Epoch ``e`` is a permutation of the dataset seeded by ``(seed, e)``; the augmentation of position
``g`` is seeded by ``(seed, g)``. Rank ``r`` of ``W`` takes, at iteration ``i`` with ``B`` images
per rank, positions ``(i * W + r) * B ... + B - 1``. Resuming at iteration ``i`` therefore replays
exactly the batches a straight run would have seen, whatever the number of loader workers.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from panoptix.data.datasets import PanopticDataset
from panoptix.data.targets import build_targets
from panoptix.data.transforms import TrainTransform
from panoptix.engine.predictor import chw_uint8


class TrainingStream(Dataset):
    """``stream[g]`` -> (image (3, H, W) uint8 tensor, targets dict) for stream position ``g``."""

    def __init__(self, dataset: PanopticDataset, transform: TrainTransform, semantic_variant: str, seed: int) -> None:
        if len(dataset) == 0:
            raise ValueError("the training set is empty")
        self.dataset, self.transform = dataset, transform
        self.semantic_variant, self.seed = semantic_variant, int(seed)
        self._epoch, self._perm = -1, None

    def __len__(self) -> int:
        return len(self.dataset)

    def index_at(self, g: int) -> int:
        epoch, k = divmod(int(g), len(self.dataset))
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._epoch = torch.randperm(len(self.dataset), generator=gen).tolist(), epoch
        return self._perm[k]

    def __getitem__(self, g: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sample = self.dataset[self.index_at(g)]
        if sample.image is None:
            raise ValueError(f"image {sample.image_id!r} has no RGB image (is image_dir set?)")
        sample = self.transform(sample, np.random.default_rng([self.seed, int(g)]))
        return chw_uint8(sample.image), build_targets(sample, self.dataset.meta, self.semantic_variant)


class StreamBatchSampler(Sampler[list[int]]):
    """Batches of stream positions for one rank, iterations ``start .. stop - 1``."""

    def __init__(self, batch_size: int, start: int, stop: int, rank: int = 0, world_size: int = 1) -> None:
        self.batch_size, self.start, self.stop = batch_size, start, stop
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for it in range(self.start, self.stop):
            first = (it * self.world_size + self.rank) * self.batch_size
            yield list(range(first, first + self.batch_size))


def collate_list(batch: list) -> tuple[list, list]:
    """Variable-size images stay a list (the model pads them)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def stream_loader(stream: TrainingStream, batch_size: int, start: int, stop: int, rank: int, world_size: int,
                  num_workers: int, seed: int, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over the stream. Its own generator keeps it from drawing on the global RNG."""
    gen: Optional[torch.Generator] = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        stream, batch_sampler=StreamBatchSampler(batch_size, start, stop, rank, world_size),
        num_workers=num_workers, collate_fn=collate_list, generator=gen, pin_memory=pin_memory,
        persistent_workers=False)
