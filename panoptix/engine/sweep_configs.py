"""A sweep's existing runs against the configs it would train them with now.

A re-run of ``panoptix sweep`` reuses a finished run and resumes an unfinished one. If a variant's
overrides, the base config or the sweep's overrides changed since, that run would be reported, or
continued, under settings it was not trained with: a silently wrong table. So every run folder
with a ``config.json`` is compared first, key by key, both sides read through the current config
loader (a setting added since, at its default, is no change). Settings that leave the trained
weights alone (where the run writes, how often it logs or evaluates, the loader's workers) are not
compared, nor are the keys a user accepts by name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from panoptix.errors import PanoptixError

# Dotted keys (and the keys under them) whose change leaves a run's trained weights as they are.
NON_TRAINING_KEYS = ("engine.output_dir", "engine.resume", "engine.log_period", "engine.tensorboard",
                     "engine.checkpoint_period", "engine.eval_period", "engine.eval_images", "engine.final_eval",
                     "engine.device", "data.num_workers", "data.val")


def flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (an empty dict is a value)."""
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _skipped(key: str, skip: Sequence[str]) -> bool:
    return any(key == k or key.startswith(k + ".") for k in skip)


def config_changes(saved: dict[str, Any], planned: dict[str, Any], accepted: Sequence[str] = ()) -> list[str]:
    """``"key: saved -> planned"`` for each training setting that differs between a run's saved
    config and the one it would be trained with now, compared as JSON (a tuple equals a list)."""
    old, new = (flatten(json.loads(json.dumps(c))) for c in (saved, planned))
    skip = (*NON_TRAINING_KEYS, *accepted)
    absent = "(absent)"
    return [f"{k}: {json.dumps(old.get(k, absent))} -> {json.dumps(new.get(k, absent))}"
            for k in sorted(old.keys() | new.keys())
            if not _skipped(k, skip) and old.get(k, absent) != new.get(k, absent)]


def check_existing_runs(runs: Sequence[Any], planned: Callable[[Any], dict[str, Any]],
                        load_saved: Callable[[Path], dict[str, Any]], accepted: Sequence[str] = ()) -> None:
    """Raise a one-line `PanoptixError` for the first run (a `sweep.Run`) whose folder holds a
    ``config.json`` with other training settings than ``planned(run)``; ``load_saved`` reads it
    through the config loader."""
    for run in runs:
        saved = run.folder / "config.json"
        if not saved.is_file():
            continue
        changes = config_changes(load_saved(saved), planned(run), accepted)
        if changes:
            more = f" (and {len(changes) - 3} more)" if len(changes) > 3 else ""
            raise PanoptixError(
                f"run {run.variant.name} seed {run.seed} in {run.folder} was trained with other settings: "
                f"{'; '.join(changes[:3])}{more}. Name the variant differently or use another --out; where the "
                f"change leaves the trained weights alone, pass --accept-config-change KEY")
