"""``panoptix fit-fusion``: choose, per thing class, the end of a two-level fusion (AntVisionPS, Hong et al. 2019) from
each end's per-class PQ on a held-out split, and optionally compare the ends with the fused system
on a test split (the shape of AntVisionPS's Table 3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from panoptix.data.datasets import PanopticDataset
from panoptix.engine.ablation import MergeSpec, build_merge
from panoptix.engine.predictor import Predictor, evaluate_dataset
from panoptix.evaluation.panoptic import percent_row
from panoptix.fusion.two_level import TwoLevelFusion, choice_to_json, choose_ends

DEFAULT_MERGE = "heuristic"  # AntVisionPS merges the fused outputs with the heuristic merge


def named_fusion(system: nn.Module, name: str | None) -> Any:
    """The merge ``name`` with the system's merge settings that it accepts (None: the system's own)."""
    if name is None:
        return None
    return build_merge(MergeSpec.parse(name), getattr(system.fusion, "keywords", {}))[0]


def _row(name: str, result: dict[str, Any], images: int) -> dict[str, Any]:
    row = percent_row(result)
    return {"system": name, **{k: row[k] for k in ("PQ", "PQ_th", "PQ_st")}, "images": images}


def fit_two_level(ends: Sequence[nn.Module], names: Sequence[str], fit_set: PanopticDataset,
                  test_set: PanopticDataset | None, device: Any, fusion: str | None = None,
                  limit: int | None = None, batch_size: int = 4) -> dict[str, Any]:
    """The per-class choice on ``fit_set`` and, with ``test_set``, a table of each end and the fused
    system. Returns the JSON record (``choice_to_json`` plus ``fit``, ``table``)."""
    meta = ends[0].meta
    fit_idx = range(min(limit, len(fit_set))) if limit else None
    per_class = []
    for end, name in zip(ends, names):
        result = evaluate_dataset(Predictor(end, device, batch_size), fit_set, fit_idx, progress=True)
        per_class.append(result["per_class"])
    choice = choose_ends(per_class, meta.thing_ids)
    record = choice_to_json(choice, names, per_class, {c.id: c.name for c in meta.categories})
    fusion = fusion or DEFAULT_MERGE
    record["fit"] = {"images": len(fit_idx) if fit_idx is not None else len(fit_set), "fusion": fusion}
    if test_set is not None:
        fused = TwoLevelFusion(ends, choice, named_fusion(ends[0], fusion))
        rows = []
        for model, name in [*zip(ends, names), (fused, "two-level fusion")]:
            result = evaluate_dataset(Predictor(model, device, batch_size), test_set, progress=True)
            rows.append(_row(name, result, len(test_set)))
        record["table"] = rows
    return record


__all__ = ["DEFAULT_MERGE", "fit_two_level", "named_fusion"]
