"""What each logged training row says about speed: seconds per iteration, the part spent waiting for
data, the ETA and the peak memory (the columns detectron2's and mmdetection's logs carry)."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch


class StepTimer:
    """Times the iterations between two log rows.

    ``timed(loader)`` yields the loader's batches and measures how long each took to arrive;
    ``row(iteration)`` returns the window's ``time`` and ``data_time`` (seconds per iteration, means),
    ``eta_seconds`` (to ``max_iter`` at the window's pace) and ``max_mem_mb`` (peak CUDA memory
    allocated on a GPU; the process's peak resident memory on a CPU), then starts a new window.
    """

    def __init__(self, max_iter: int, device: torch.device) -> None:
        self.max_iter, self.device = max_iter, device
        self._data = 0.0
        self._steps = 0
        self._window_start = time.perf_counter()

    def timed(self, loader: Iterable[Any]) -> Iterator[Any]:
        batches = iter(loader)
        while True:
            t = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            self._data += time.perf_counter() - t
            self._steps += 1
            yield batch

    def row(self, iteration: int) -> dict[str, float]:
        now = time.perf_counter()
        steps = max(self._steps, 1)
        per_iter = (now - self._window_start) / steps
        out = {"time": per_iter, "data_time": self._data / steps,
               "eta_seconds": per_iter * max(self.max_iter - iteration, 0), "max_mem_mb": self.peak_memory_mb()}
        self._data, self._steps, self._window_start = 0.0, 0, now
        return out

    def peak_memory_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024
