"""The panoptic task: PQ, its table, the heuristic/UPSNet ensembles and TTA."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from panoptix.engine.tasks import Task
from panoptix.registry import TASKS


@TASKS.register("panoptic")
class PanopticTask(Task):
    name = "panoptic"
    curve_keys = ("PQ", "PQ_th", "PQ_st")
    curve_label = "PQ"

    def evaluator(self, meta: Any) -> Any:
        from panoptix.evaluation.panoptic import PanopticEvaluator

        return PanopticEvaluator(meta)

    def headline(self, result: dict[str, Any]) -> dict[str, float]:
        from panoptix.evaluation.panoptic import percent_row

        return percent_row(result)

    def headline_line(self, row: dict[str, float]) -> str:
        return f"PQ {row['PQ']:.1f} (things {row['PQ_th']:.1f}, stuff {row['PQ_st']:.1f})"

    def table(self, result: dict[str, Any]) -> str:
        from panoptix.evaluation.panoptic import format_per_class, format_table

        return format_table(result) + "\n\n" + format_per_class(result)

    def tta(self, models: Sequence[Any], weights: Sequence[float], settings: Any,
            crop_size: Sequence[int] | None = None) -> Any:
        from panoptix.engine.ensemble import PanopticEnsemble

        return PanopticEnsemble(models, weights, settings)
