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

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from panoptix.engine.config_changes import config_changes
from panoptix.errors import PanoptixError


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
