"""Tasks: what the engine and the CLI ask of a kind of result, so that they never branch on it.

A system declares its task by name (``task = "panoptic"`` or ``"semantic"``); `task_of` returns the
registered `Task`, which owns its evaluator, its headline row and result table, the curve keys the
logger plots, its TTA / ensemble wrapper and the extra prediction files it writes. A new task (depth,
say) is one new module in this package that registers a `Task` subclass in ``TASKS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from panoptix.registry import TASKS


class Task:
    """The interface; see `panoptix.engine.tasks.panoptic.PanopticTask` for the reference implementation.

    Attributes:
        name: the name systems declare.
        curve_keys: the headline row's keys plotted against iteration by the logger.
        curve_label: the y-axis label of that plot.
    """

    name = ""
    curve_keys: tuple[str, ...] = ()
    curve_label = ""

    def evaluator(self, meta: Any) -> Any:
        """An evaluator with ``add(sample, result)`` and ``all_reduce().summary()``."""
        raise NotImplementedError

    def headline(self, result: dict[str, Any]) -> dict[str, float]:
        """The summary's headline figures in percent (what the logs, tables and sweeps report)."""
        raise NotImplementedError

    def headline_line(self, row: dict[str, float]) -> str:
        """One line of the headline row, for progress output."""
        raise NotImplementedError

    def table(self, result: dict[str, Any]) -> str:
        """The printed result table."""
        raise NotImplementedError

    def tta(self, models: Sequence[Any], weights: Sequence[float], settings: Any,
            crop_size: Sequence[int] | None = None) -> Any:
        """``models`` under test-time augmentation ``settings`` / as a weighted ensemble."""
        raise NotImplementedError

    def write_prediction(self, out_dir: Path, name: str, result: Any, meta: Any) -> Path | None:
        """Extra files for one predicted image beside the COCO panoptic output; their folder, or None."""
        return None

    def finish_predictions(self, folder: Path, meta: Any) -> None:
        """Called once after every image when `write_prediction` returned ``folder``."""


def task_of(model: Any) -> Task:
    """The `Task` a system (or a wrapper of systems) declares with its ``task`` attribute."""
    return TASKS.get(getattr(model, "task", "panoptic"), "task")()


__all__ = ["Task", "task_of"]
