"""The panoptic task: PQ, its table, the heuristic/UPSNet ensembles and TTA."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from panoptix.registry import TASKS
from panoptix.engine.tasks import Task


@TASKS.register("panoptic")
class PanopticTask(Task):
    name = "panoptic"
    curve_keys = ("PQ", "PQ_th", "PQ_st")
    curve_label = "PQ"

    def evaluator(self, meta: Any) -> Any:
        from panoptix.evaluation.panoptic import PanopticEvaluator

        return PanopticEvaluator(meta)

    def headline(self, result: dict[str, Any]) -> dict[str, float]:
        return {"PQ": 100 * result["All"]["pq"], "SQ": 100 * result["All"]["sq"], "RQ": 100 * result["All"]["rq"],
                "PQ_th": 100 * result["Things"]["pq"], "PQ_st": 100 * result["Stuff"]["pq"]}

    def headline_line(self, row: dict[str, float]) -> str:
        return f"PQ {row['PQ']:.1f} (things {row['PQ_th']:.1f}, stuff {row['PQ_st']:.1f})"

    def table(self, result: dict[str, Any]) -> str:
        from panoptix.evaluation.panoptic import format_table

        return format_table(result)

    def tta(self, models: Sequence[Any], weights: Sequence[float], settings: Any,
            crop_size: Optional[Sequence[int]] = None) -> Any:
        from panoptix.engine.ensemble import PanopticEnsemble

        return PanopticEnsemble(models, weights, settings)
