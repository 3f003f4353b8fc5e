"""Which training settings differ between two configs: a checkpoint's or a run folder's saved
config against the one a run would be trained with now. Settings that leave the trained weights
alone (where a run writes, how often it logs or evaluates, the loader's workers) are not compared."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

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
