"""How ``panoptix sweep`` scores one (variant, seed): a trained run as it is, reloaded with other
settings (an evaluation variant, test-time augmentation), a weighted ensemble of several variants'
runs of that seed, or AntVisionPS's two-level fusion of two such ends (Hong et al. 2019), fitted per
seed on a held-out set that is not the test set.

Every score is cached in ``FOLDER/sweep_eval.json`` under a key naming the test set and everything
that changes the prediction, so a re-run evaluates only what is new.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from panoptix.engine.sweep import seeded
from panoptix.errors import PanoptixError


@dataclass
class TestSet:
    """The held-out set the runs are scored on: ``root`` in COCO's layout, or (None) each run's
    own ``data.val``."""

    root: str | None
    split: str = "val"

    def key(self) -> str:
        return f"{self.root}:{self.split}" if self.root else "val"

    def open(self, run_folder: Path, where: str = "--test-data"):
        from panoptix.data.spec import DatasetSpec
        from panoptix.engine.build import build_dataset

        if self.root:
            return DatasetSpec(format="coco", root=self.root, split=self.split).open(where=where)
        cfg = json.loads((run_folder / "config.json").read_text())
        dataset = build_dataset(cfg["data"]["val"], where="data.val")
        if dataset is None:
            raise PanoptixError(f"{run_folder}: its config has no data.val; pass --test-data")
        return dataset


def cached_score(folder: Path, key: str, load: Callable[[], tuple[Any, Any]], test: TestSet,
                 config_folder: Path) -> dict[str, Any]:
    """``{"headline", "keys", "images"}`` of the predictor ``load()`` returns (with its `DatasetMeta`)
    on ``test``, from ``folder/sweep_eval.json`` when ``key`` is there (else computed and stored).
    ``config_folder`` is the run whose ``data.val`` stands in when ``test`` names no root."""
    from panoptix.engine.predictor import evaluate_dataset
    from panoptix.engine.tasks import task_of

    cache = folder / "sweep_eval.json"
    cached = json.loads(cache.read_text()) if cache.is_file() else {}
    if key in cached:
        return cached[key]
    predictor, meta = load()
    dataset = test.open(config_folder)
    if dataset.meta.to_json() != meta.to_json():
        raise PanoptixError(f"{test.root or 'data.val'} has other categories than the model of {config_folder}")
    task = task_of(predictor.model)
    result = evaluate_dataset(predictor, dataset, progress=False)
    cached[key] = {"headline": task.headline(result), "keys": list(task.curve_keys), "images": len(dataset)}
    folder.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(cached, indent=1))
    return cached[key]


def score_run(folder: Path, test: TestSet, device: str, batch_size: int, overrides: Sequence[str] = (),
              tta: str | None = None) -> dict[str, Any]:
    """A trained run loaded with ``overrides`` (an evaluation variant: another merge, a refinement) and
    wrapped in test-time augmentation ``tta`` (its task's, as ``predict --tta``)."""
    from panoptix.engine.build import load_ensemble, load_predictor

    key = test.key() + "".join(f" {o}" for o in overrides) + (f" tta={tta}" if tta else "")

    def load():
        if tta:
            return load_ensemble([(folder, 1.0)], tta, overrides=overrides, batch_size=batch_size, device=device)
        return load_predictor(folder, overrides=overrides, batch_size=batch_size, device=device)

    return cached_score(folder, key, load, test, folder)


def ensemble_spec(members: Sequence[tuple[Path, float]]) -> str:
    """``a:0.4,b:1.2`` for ``predict --ensemble`` and a fusion end (run folders hold no ``:`` or ``,``)."""
    bad = [str(p) for p, _ in members if ":" in str(p) or "," in str(p)]
    if bad:
        raise PanoptixError(f"{bad[0]}: a run folder for an ensemble may not contain ':' or ','")
    return ",".join(f"{p}:{w:g}" for p, w in members)


def score_ensemble(folder: Path, members: Sequence[tuple[Path, float]], test: TestSet, device: str,
                   batch_size: int) -> dict[str, Any]:
    """The weighted ensemble of ``members`` (run folders, weights), as ``predict --ensemble`` runs it;
    cached in ``folder`` (the ensemble's own, beside the runs)."""
    from panoptix.engine.build import load_ensemble

    def load():
        return load_ensemble(list(members), batch_size=batch_size, device=device)

    return cached_score(folder, f"{test.key()} ensemble={ensemble_spec(members)}", load, test, members[0][0])


def end_spec(members: Sequence[tuple[Path, float]]) -> str:
    """A two-level fusion end as `load_end` reads it: a run folder alone, or an `ensemble_spec`."""
    return str(members[0][0]) if len(members) == 1 and members[0][1] == 1.0 else ensemble_spec(members)


def score_two_level(folder: Path, ends: Sequence[Sequence[tuple[Path, float]]], fit: TestSet, test: TestSet,
                    device: str, batch_size: int) -> dict[str, Any]:
    """Two-level fusion of ``ends`` (each one run folder, or several weighted: an ensemble end, as
    AntVisionPS's E-UPS), its per-class choice fitted on ``fit`` as ``panoptix fit-fusion`` fits it
    (record: ``folder/two_level.json``), merged with the paper's heuristic merge, scored on ``test``."""
    from panoptix.engine.build import load_end, two_level_predictor
    from panoptix.engine.fit_fusion import fit_two_level
    from panoptix.jsonio import write_json

    if fit.key() == test.key():
        raise PanoptixError(f"the two-level fusion's fit set is its test set ({fit.key()}): fit it on another")
    specs = [end_spec(end) for end in ends]
    first = ends[0][0][0]

    def load():
        loaded = [load_end(spec, device=device) for spec in specs]   # loaded once: fitted, then scored
        record = fit_two_level([m for m, *_ in loaded], specs, fit.open(first, "--fit-data"), None, loaded[0][3],
                               batch_size=batch_size)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "two_level.json", record)
        return two_level_predictor(loaded, record, batch_size=batch_size)

    return cached_score(folder, f"{test.key()} two_level={'+'.join(specs)} fit={fit.key()}", load, test, first)


def score_variant(variant: Any, seed: int, out: Path, base: str, ensembles: dict[str, Any], test: TestSet,
                  fit: TestSet | None, device: str, batch_size: int) -> dict[str, Any]:
    """One `panoptix.engine.sweep.Variant` at ``seed``, as its ``kind`` says; ``base`` is the variant whose
    runs evaluation variants reload, ``ensembles`` the ensemble variants by name (two-level ends)."""
    def run(name: str) -> Path:
        return out / name / f"seed_{seed}"

    def members(name: str) -> list[tuple[Path, float]]:
        return [(run(m), w) for m, w in ensembles[name].members] if name in ensembles else [(run(name), 1.0)]

    if variant.kind == "ensemble":
        return score_ensemble(run(variant.name), members(variant.name), test, device, batch_size)
    if variant.kind == "two_level":
        return score_two_level(run(variant.name), [members(e) for e in variant.ends], fit, test, device, batch_size)
    if variant.kind == "eval":
        return score_run(run(base), test, device, batch_size, seeded(variant.overrides, seed), variant.tta)
    return score_run(run(variant.name), test, device, batch_size)


__all__ = ["TestSet", "cached_score", "end_spec", "ensemble_spec", "score_ensemble", "score_run",
           "score_two_level", "score_variant"]
