"""AntVisionPS's two-level fusion of two network ends (AntVisionPS, Hong et al. 2019, section 1.3).

Task-dependent level: for instance segmentation, each thing class takes its instances from the end
that scored higher on *that class* on a held-out split (`choose_ends`, written to JSON by
``panoptix fit-fusion``); for semantic segmentation, the two ends' probabilities are averaged.
Task-independent level: one merge of the fused outputs, the heuristic one by default (the paper's
choice; UPSNet's merge is the "future work" it mentions and is allowed here). An end may be one
system or a weighted ensemble of several (the paper's E-UPS end is one): anything with
``predict_raw``, ``meta``, ``semantic_categories``, ``fusion`` and ``fuse``.

Reading of "class-wise IS performance": we score each end by its per-class PQ on the held-out
split (the PQ of that thing class, which is what the fused system is judged on); a tie keeps the
first end. Both ends must share the dataset's categories and semantic variant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from panoptix.errors import PanoptixError
from panoptix.fusion.average import average_semantic, reads_logits
from panoptix.structures import Instances, PanopticResult, RawPanoptic


class FusionError(PanoptixError, ValueError):
    """Ends that cannot be fused, or a per-class choice that does not fit them."""


def choose_ends(per_class: Sequence[Mapping[int, Mapping[str, float]]], thing_ids: Sequence[int],
                metric: str = "pq") -> dict[int, int]:
    """{thing category id: index of the end with the higher ``metric`` on it} (ties: the first).

    Args:
        per_class: each end's ``per_class`` results (category id -> {"pq": ..., ...}).
        thing_ids: the thing categories to choose for.
    """
    choice = {}
    for cid in thing_ids:
        scores = [float(end.get(cid, end.get(str(cid), {})).get(metric, 0.0)) for end in per_class]
        choice[int(cid)] = max(range(len(scores)), key=lambda i: (scores[i], -i))
    return choice


def concat_instances(parts: Sequence[Instances], size: tuple[int, int]) -> Instances:
    """Instances of one image from several sources (masks (N, H, W) at ``size``); ``extra`` dropped."""
    parts = [p for p in parts if p is not None]
    boxes = torch.cat([p.boxes for p in parts])
    masks = [p.masks for p in parts]
    return Instances(boxes, torch.cat([p.scores for p in parts]), torch.cat([p.labels for p in parts]),
                     torch.cat(masks) if all(m is not None for m in masks) else None,
                     mask_logits=parts[0].mask_logits, image_size=size)


def fuse_ends(raws: Sequence[RawPanoptic], thing_ids: Sequence[int], choice: Mapping[int, int],
              average_logits: bool = False) -> RawPanoptic:
    """One image's `RawPanoptic` from each end -> the fused one: instances of each thing class from
    its chosen end, semantic log of the mean probabilities (the mean logits for a merge that reads
    logits, UPSNet's; see `panoptix.fusion.average`)."""
    size = tuple(raws[0].semantic_logits.shape[-2:])
    picked = []
    for e, raw in enumerate(raws):
        inst = raw.instances
        mine = torch.tensor([choice[int(thing_ids[k])] == e for k in range(len(thing_ids))], dtype=torch.bool,
                            device=inst.labels.device)
        picked.append(inst[mine[inst.labels]] if len(inst) else inst)
    semantic = average_semantic([r.semantic_logits for r in raws], logits=average_logits)
    return RawPanoptic(concat_instances(picked, size), semantic, raws[0].image)


class TwoLevelFusion(nn.Module):
    """Two (or more) trained two-stage systems fused per class, behind the inference contract.

    Args:
        ends: two-stage systems or ensembles of them (same categories and semantic variant).
        choice: {thing category id: end index} from `choose_ends`.
        fusion: the merge; None uses the first end's (the engine passes the heuristic merge with the
            first end's settings unless told otherwise: `panoptix.engine.fit_fusion.named_fusion`).
    """

    def __init__(self, ends: Sequence[nn.Module], choice: Mapping[int, int],
                 fusion: Callable[..., PanopticResult] | None = None) -> None:
        super().__init__()
        if len(ends) < 2:
            raise FusionError("two-level fusion needs at least two ends")
        first = ends[0]
        for i, end in enumerate(ends):
            if not hasattr(end, "predict_raw") or not hasattr(end, "semantic_categories"):
                raise FusionError(f"end {i} ({type(end).__name__}) is not a two-stage system or an ensemble of them")
            if end.meta.to_json() != first.meta.to_json() or end.semantic_categories != first.semantic_categories:
                raise FusionError(f"end {i} was trained on other categories or another semantic variant than end 0")
        missing = sorted(set(first.meta.thing_ids) - set(int(k) for k in choice))
        bad = sorted(int(k) for k, v in choice.items() if not 0 <= int(v) < len(ends))
        if missing or bad:
            raise FusionError(f"the per-class choice lacks thing categories {missing} or names ends that do not "
                              f"exist for {bad}; refit it with panoptix fit-fusion")
        self.ends = nn.ModuleList(ends)
        self.choice = {int(k): int(v) for k, v in choice.items()}
        self.fusion = fusion

    @torch.no_grad()
    def forward(self, images: list[torch.Tensor]) -> list[PanopticResult]:
        first = self.ends[0]
        per_end = [end.predict_raw(images) for end in self.ends]
        logits = reads_logits(self.fusion or first.fusion)
        return [first.fuse(fuse_ends(raws, first.meta.thing_ids, self.choice, logits), fusion=self.fusion)
                for raws in zip(*per_end)]


def choice_to_json(choice: Mapping[int, int], ends: Sequence[str], per_class: Sequence[Mapping[int, Any]],
                   names: Mapping[int, str]) -> dict[str, Any]:
    """The record ``fit-fusion`` writes: the ends, and per thing class its name, chosen end and scores."""
    return {"ends": list(ends), "metric": "pq",
            "classes": [{"category_id": cid, "name": names[cid], "end": end,
                         "scores": [float(pc.get(cid, {}).get("pq", 0.0)) for pc in per_class]}
                        for cid, end in sorted(choice.items())]}


def choice_from_json(record: Mapping[str, Any]) -> dict[int, int]:
    try:
        return {int(c["category_id"]): int(c["end"]) for c in record["classes"]}
    except (KeyError, TypeError, ValueError):
        raise FusionError("not a fit-fusion record (expected classes: [{category_id, end}, ...])") from None


__all__ = ["TwoLevelFusion", "choose_ends", "fuse_ends", "concat_instances", "choice_to_json", "choice_from_json",
           "FusionError"]
