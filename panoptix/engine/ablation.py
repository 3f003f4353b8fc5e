"""Merge ablations of a two-stage system (``panoptix ablate``): one network pass per image, every
merge on the same instances and semantic logits, PQ and merge time per merge, in the shape of
OANet's Table 3.

A merge is written ``FUSION`` or ``FUSION+crf`` / ``FUSION+crf:BACKEND`` (``upsnet+crf:densecrf``);
the fusion's options are the system's ``model.fusion`` options that the fusion also has (score
threshold, stuff area limit, ...), so the merges differ only in how they merge.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from panoptix.data.datasets import PanopticDataset
from panoptix.engine.predictor import to_tensor
from panoptix.evaluation.panoptic import PanopticEvaluator, percent_row
from panoptix.fusion.needs import needs_head
from panoptix.fusion.ranking import RANKING_HEAD
from panoptix.registry import FUSIONS, REFINEMENTS, ConfigError, build, config_parameters

CRF_BACKENDS = ("torch", "densecrf")


@dataclass(frozen=True)
class MergeSpec:
    """One row of the ablation: a registered fusion and an optional CRF backend."""

    fusion: str
    crf_backend: str | None = None

    @property
    def name(self) -> str:
        return self.fusion + (f"+crf:{self.crf_backend}" if self.crf_backend else "")

    @classmethod
    def parse(cls, text: str, default_backend: str = "torch") -> MergeSpec:
        fusion, _, refine = text.strip().partition("+")
        if fusion not in FUSIONS:
            raise ConfigError(f"--fusions: unknown fusion {fusion!r}; registered: {', '.join(FUSIONS.names())}")
        if not refine:
            return cls(fusion)
        kind, _, backend = refine.partition(":")
        backend = backend or default_backend
        if kind != "crf" or backend not in CRF_BACKENDS:
            raise ConfigError(f"--fusions: {text!r}: after '+' write crf or crf:BACKEND ({', '.join(CRF_BACKENDS)})")
        return cls(fusion, backend)


def parse_merges(text: str, default_backend: str = "torch") -> list[MergeSpec]:
    specs = [MergeSpec.parse(t, default_backend) for t in text.split(",") if t.strip()]
    if not specs:
        raise ConfigError("--fusions names no merge")
    return specs


def build_merge(spec: MergeSpec, fusion_cfg: dict[str, Any], crf_cfg: dict[str, Any] | None = None
                ) -> tuple[Callable[..., Any], Callable[..., Any] | None]:
    """(fusion, refine) of a spec; the fusion takes the options of ``fusion_cfg`` it also has."""
    params = config_parameters(FUSIONS.get(spec.fusion))
    shared = {k: v for k, v in fusion_cfg.items() if k != "name" and k in params}
    refine = None
    if spec.crf_backend:
        refine = build(REFINEMENTS, {"name": "crf", **(crf_cfg or {}), "backend": spec.crf_backend})
    return build(FUSIONS, {"name": spec.fusion, **shared}), refine


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def ablate_merges(model: torch.nn.Module, fusion_cfg: dict[str, Any], dataset: PanopticDataset,
                  specs: Sequence[MergeSpec], device: torch.device | str = "cpu", batch_size: int = 4,
                  indices: Sequence[int] | None = None, crf_cfg: dict[str, Any] | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """PQ and merge time of each merge on the same network outputs.

    Args:
        model: a two-stage system (``predict_raw`` and ``fuse``); the ``ranking`` merge needs its
            ranking head, ``upsnet`` its semantic head on all classes.
        fusion_cfg: the system's ``model.fusion`` section (shared options).
        specs: the merges (`parse_merges`).

    Returns:
        ``{"rows": [{merge, pq, pq_th, pq_st, sq, rq, merge_ms, ...}], "network_ms", "images"}``;
        ``ranking`` rows include the ranking head's own time in ``merge_ms``.
    """
    device = torch.device(device)
    model.eval().to(device)
    merges = {s.name: build_merge(s, fusion_cfg, crf_cfg) for s in specs}
    evaluators = {s.name: PanopticEvaluator(dataset.meta) for s in specs}
    seconds = {s.name: 0.0 for s in specs}
    network = ranking = 0.0
    indices = list(range(len(dataset))) if indices is None else list(indices)
    bar = tqdm(total=len(indices), desc="ablate", unit="img", disable=not progress, leave=False)
    for i in range(0, len(indices), batch_size):
        samples = [dataset[j] for j in indices[i:i + batch_size]]
        images = [to_tensor(s.image, device) for s in samples]
        start = time.perf_counter()
        raws = model.predict_raw(images)
        _sync(device)
        network += time.perf_counter() - start
        ranking += sum(raw.ranking_seconds for raw in raws)
        for spec in specs:
            fusion, refine = merges[spec.name]
            for sample, raw in zip(samples, raws):
                start = time.perf_counter()
                result = model.fuse(raw, fusion, refine)
                _sync(device)
                seconds[spec.name] += time.perf_counter() - start
                if needs_head(fusion) == RANKING_HEAD:   # the ranking head's time is this merge's cost
                    seconds[spec.name] += raw.ranking_seconds
                evaluators[spec.name].add(sample, result)
        bar.update(len(samples))
    bar.close()
    n = max(len(indices), 1)
    rows = []
    for spec in specs:
        s = evaluators[spec.name].summary()
        rows.append({"merge": spec.name, **{k.lower(): v for k, v in percent_row(s).items()},
                     "merge_ms": 1000 * seconds[spec.name] / n, "per_class": s.get("per_class")})
    return {"rows": rows, "network_ms": 1000 * (network - ranking) / n, "images": len(indices),
            "device": str(device)}


def markdown_table(report: dict[str, Any], title: str = "") -> str:
    """The rows as a Markdown table in the shape of OANet (Liu et al. 2019) Table 3 (plus merge ms/image)."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| Merge | PQ | PQ_th | PQ_st | SQ | RQ | merge ms/img |", "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['merge']} | {r['pq']:.1f} | {r['pq_th']:.1f} | {r['pq_st']:.1f} | {r['sq']:.1f} | "
                     f"{r['rq']:.1f} | {r['merge_ms']:.1f} |")
    lines += ["", f"{report['images']} images on {report['device']}; network {report['network_ms']:.1f} ms/img "
                  "(shared by every merge; the ranking row's merge time includes the ranking head)."]
    return "\n".join(lines + per_class_table(report["rows"]))


def per_class_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: PQ of each category (things first, then stuff, by name) under each merge."""
    classes = rows[0].get("per_class") if rows else None
    if not classes:
        return []
    order = sorted(classes, key=lambda c: (not classes[c]["isthing"], str(classes[c]["name"])))
    lines = ["", "| Category | kind | " + " | ".join(r["merge"] for r in rows) + " |",
             "|---|---|" + "---|" * len(rows)]
    for c in order:
        pqs = " | ".join(f"{100 * r['per_class'][c]['pq']:.1f}" for r in rows)
        lines.append(f"| {classes[c]['name']} | {'thing' if classes[c]['isthing'] else 'stuff'} | {pqs} |")
    return lines


__all__ = ["MergeSpec", "parse_merges", "build_merge", "ablate_merges", "markdown_table", "CRF_BACKENDS"]
