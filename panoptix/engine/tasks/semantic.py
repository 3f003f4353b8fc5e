"""The semantic (scene parsing) task: mIoU / pixel accuracy / ADE score, softmax-averaging TTA, and
label PNGs beside the panoptic output."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from panoptix.engine.tasks import Task
from panoptix.registry import TASKS


@TASKS.register("semantic")
class SemanticTask(Task):
    name = "semantic"
    curve_keys = ("mIoU", "pixel_acc", "ADE")
    curve_label = "mIoU / pixel acc / ADE score"

    def evaluator(self, meta: Any) -> Any:
        from panoptix.evaluation.semantic import SemanticEvaluator

        return SemanticEvaluator.for_meta(meta)

    def headline(self, result: dict[str, Any]) -> dict[str, float]:
        from panoptix.evaluation.semantic import semantic_percent_row

        return semantic_percent_row(result)

    def headline_line(self, row: dict[str, float]) -> str:
        return f"mIoU {row['mIoU']:.1f}, pixel acc {row['pixel_acc']:.1f}, ADE score {row['ADE']:.1f}"

    def table(self, result: dict[str, Any]) -> str:
        from panoptix.evaluation.semantic import format_semantic_table

        return format_semantic_table(result)

    def tta(self, models: Sequence[Any], weights: Sequence[float], settings: Any,
            crop_size: Sequence[int] | None = None) -> Any:
        """Softmax averaged over models, scales and flips; views larger than ``crop_size`` by sliding
        windows (HRNet's and mmseg's test recipe)."""
        from panoptix.engine.semantic_tta import SemanticTTA

        return SemanticTTA(models, settings.scales, settings.flip, crop_size=crop_size, weights=weights)

    def write_prediction(self, out_dir: Path, name: str, result: Any, meta: Any) -> Path | None:
        """``labels/NAME.png``: the category id of each pixel."""
        from panoptix.data.labels import category_map, write_label_png

        folder = Path(out_dir) / "labels"
        write_label_png(folder / f"{name}.png", category_map(result.extra["semantic"], meta.category_ids))
        return folder

    def finish_predictions(self, folder: Path, meta: Any) -> None:
        from panoptix.data.labels import write_categories

        write_categories(folder, meta)
