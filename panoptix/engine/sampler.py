"""A replayable training stream: position ``g`` of the stream always yields the same sample.

Epoch ``e`` is a permutation of the dataset seeded by ``(seed, e)``; the augmentation of position
``g`` is seeded by ``(seed, g)``. Rank ``r`` of ``W`` takes, at iteration ``i`` with ``B`` images
per rank, positions ``(i * W + r) * B ... + B - 1``. Resuming at iteration ``i`` therefore replays
exactly the batches a straight run would have seen, whatever the number of loader workers.

Aspect-ratio grouping (``group_size=B``, detectron2's default): the epoch's permutation is walked
with one bucket per orientation (landscape or square, portrait); a bucket that fills up to ``B``
images becomes the next ``B`` positions of the epoch, and what is left over at the end of an epoch
is dropped (the next permutation differs, so every image is still seen). Every per-rank batch is
then one orientation, and little of a padded batch is padding. Images of unknown size count as
landscape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from panoptix.data.datasets import PanopticDataset
from panoptix.data.sample import PanopticSample
from panoptix.data.transforms import TrainTransform
from panoptix.engine.batch_transport import UnpackedBatches, pack_tensors
from panoptix.image_input import to_chw


class TrainingStream(Dataset):
    """``stream[g]`` -> (image (3, H, W) uint8 tensor, targets dict) for stream position ``g``.

    Args:
        dataset: the training split.
        transform: augmentation, called with a generator seeded by the position.
        target_fn: ``PanopticSample -> targets`` (the system's ``target_builder()``).
        seed: seeds the epoch permutations and the augmentation.
        group_size: per-rank batch size for aspect-ratio grouping; 0 turns grouping off.
    """

    def __init__(self, dataset: PanopticDataset, transform: TrainTransform,
                 target_fn: Callable[[PanopticSample], dict[str, torch.Tensor]], seed: int,
                 group_size: int = 0) -> None:
        if len(dataset) == 0:
            raise ValueError("the training set is empty")
        self.dataset, self.transform, self.target_fn = dataset, transform, target_fn
        self.seed = int(seed)
        records = getattr(dataset, "records", None) or [None] * len(dataset)
        self.portrait = np.array([bool(r is not None and r.height and r.width and r.height > r.width)
                                  for r in records], dtype=bool)
        per_group = [int((~self.portrait).sum()), int(self.portrait.sum())]
        self.group_size = int(group_size) if group_size > 1 else 0
        self.epoch_length = (sum(n // self.group_size for n in per_group) * self.group_size if self.group_size
                             else len(dataset))
        if self.epoch_length == 0:  # each orientation has fewer images than a batch: no grouping
            self.group_size, self.epoch_length = 0, len(dataset)
        self._epoch, self._order = -1, None

    def __len__(self) -> int:
        return len(self.dataset)

    def _epoch_order(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.dataset), generator=gen).tolist()
        if not self.group_size:
            return perm
        order: list[int] = []
        buckets: tuple[list[int], list[int]] = ([], [])
        for i in perm:
            bucket = buckets[int(self.portrait[i])]
            bucket.append(i)
            if len(bucket) == self.group_size:
                order.extend(bucket)
                bucket.clear()
        return order

    def index_at(self, g: int) -> int:
        epoch, k = divmod(int(g), self.epoch_length)
        if epoch != self._epoch:
            self._order, self._epoch = self._epoch_order(epoch), epoch
        return self._order[k]

    def __getitem__(self, g: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sample = self.dataset[self.index_at(g)]
        if sample.image is None:
            raise ValueError(f"image {sample.image_id!r} has no RGB image (is image_dir set?)")
        sample = self.transform(sample, np.random.default_rng([self.seed, int(g)]), pick=self._pick)
        return to_chw(sample.image), self.target_fn(sample)

    def _pick(self, rng: np.random.Generator) -> PanopticSample:
        """Another training sample drawn with the position's generator (Mosaic's three extra images)."""
        return self.dataset[int(rng.integers(len(self.dataset)))]


class MixedStream(Dataset):
    """Two replayable streams interleaved per batch: of each per-rank batch of ``batch_size`` positions
    the first ``round(ratio * batch_size)`` come from ``labelled`` and the rest from ``pseudo``
    (AinnoSeg's student batches; spec section 10's labelled ratio, 0.5 by default). Position ``g`` of
    batch ``b`` maps to a fixed position of one sub-stream, so replay on resume stays exact.
    """

    def __init__(self, labelled: TrainingStream, pseudo: TrainingStream, ratio: float, batch_size: int) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"labelled_ratio is a fraction in 0..1, got {ratio}")
        self.labelled, self.pseudo = labelled, pseudo
        self.batch_size = int(batch_size)
        self.per_batch = min(self.batch_size, int(round(ratio * self.batch_size)))
        self.dataset = labelled.dataset  # the categories (checkpoints store them)

    def __len__(self) -> int:
        return len(self.labelled) + len(self.pseudo)

    def source(self, g: int) -> tuple[str, int]:
        """("labelled" or "pseudo", position in that stream) of mixed position ``g``."""
        b, k = divmod(int(g), self.batch_size)
        if k < self.per_batch:
            return "labelled", b * self.per_batch + k
        return "pseudo", b * (self.batch_size - self.per_batch) + k - self.per_batch

    def __getitem__(self, g: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        which, position = self.source(g)
        return getattr(self, which)[position]


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


def collate_packed(batch: list) -> Any:
    """`collate_list`, with the tensors packed for the trip out of a worker (`batch_transport`)."""
    return pack_tensors(collate_list(batch))


def stream_loader(stream: TrainingStream, batch_size: int, start: int, stop: int, rank: int, world_size: int,
                  num_workers: int, seed: int, pin_memory: bool = False) -> Iterable[tuple[list, list]]:
    """A DataLoader over the stream, yielding ``(images, targets)`` lists. Its own generator keeps it
    from drawing on the global RNG. Workers of a loader that does not pin memory send their batches
    as pickled arrays, which a CPU step receives faster than shared-memory tensors."""
    gen: torch.Generator | None = torch.Generator().manual_seed(seed)
    packed = num_workers > 0 and not pin_memory
    loader = torch.utils.data.DataLoader(
        stream, batch_sampler=StreamBatchSampler(batch_size, start, stop, rank, world_size),
        num_workers=num_workers, collate_fn=collate_packed if packed else collate_list, generator=gen,
        pin_memory=pin_memory, persistent_workers=False)
    return UnpackedBatches(loader) if packed else loader
