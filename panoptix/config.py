"""Configs: YAML files in ``configs/`` plus ``key=value`` overrides -> one checked, complete mapping.

This module loads, merges, overrides and validates, and builds nothing: models, datasets,
trainers and predictors are built from a config by `panoptix.engine.build`. It holds no
per-system code. What a section
may contain is defined by the constructor it names (see `panoptix.registry`): the model
section by the registered system and its components, ``data`` / ``solver`` / ``engine`` by the
dataclasses of `panoptix.engine.settings`. The validated config has every default filled in, so
the copy stored with a run says exactly what was trained.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from panoptix.engine.settings import DataSettings, EngineSettings, SolverSettings
from panoptix.registry import SYSTEMS, ConfigError, check_section, check_value, import_modules, validate

SECTIONS = {"data": DataSettings, "solver": SolverSettings, "engine": EngineSettings}
DEFAULT_SYSTEM = "two_stage"


def merge_config(cfg: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` updated by the nested mapping ``update`` (mappings merge key by key, other values replace)."""
    out = copy.deepcopy(cfg)
    for key, value in update.items():
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"solver.base_lr=0.01"`` -> ``{"solver": {"base_lr": 0.01}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        value = raw
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def resolve_config_path(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    bundled = Path(__file__).resolve().parent.parent / "configs" / (p.name if p.suffix else p.name + ".yaml")
    if bundled.is_file():
        return bundled
    raise ConfigError(f"config not found: {path}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = resolve_config_path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return data


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                imports: Sequence[str] = ()) -> dict[str, Any]:
    """YAML file <- ``key=value`` overrides, validated (see `validate_config`).

    A bare name (``panoptic_fpn_tiny``) is looked up in the repository's ``configs/`` folder.
    ``imports`` (and the config's ``imports:`` list) are modules imported first, so that the
    components they register can be named.
    """
    raw = read_yaml(path) if path is not None else {}
    for text in overrides:
        raw = merge_config(raw, parse_override(text))
    return validate_config(raw, imports)


def validate_config(raw: dict[str, Any], imports: Sequence[str] = ()) -> dict[str, Any]:
    """Every section checked against its constructor, defaults filled in; `ConfigError` otherwise."""
    unknown = sorted(set(raw) - {"imports", "model", *SECTIONS})
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; valid keys: imports, model, "
                          f"{', '.join(SECTIONS)}")
    modules = list(check_value(list[str], raw.get("imports") or [], "imports"))
    modules += [m for m in imports if m not in modules]
    import_modules(modules)
    model = dict(raw.get("model") or {})
    model.setdefault("name", DEFAULT_SYSTEM)
    cfg: dict[str, Any] = {"imports": modules, "model": validate(SYSTEMS, model, "model")}
    for key, settings in SECTIONS.items():
        cfg[key] = check_section(settings, raw.get(key) or {}, key)
    return cfg


def stored_config(stored: dict[str, Any], weights: str | Path, overrides: Sequence[str] = (),
                  imports: Sequence[str] = ()) -> dict[str, Any]:
    """The validated config stored in a checkpoint, with ``overrides``.

    A stored config may name modules to import (``imports:``), and importing a module runs its
    code: they are imported only when the user names each of them too (``--import`` / ``imports=``).
    Otherwise `ConfigError`, before anything is imported.
    """
    if not isinstance(stored.get("model"), dict):
        raise ConfigError(f"{weights}: its stored config has no model section; pass --config")
    stored_imports = stored.get("imports") or []
    if not isinstance(stored_imports, list) or not all(isinstance(m, str) for m in stored_imports):
        raise ConfigError(f"{weights}: its stored config's imports is not a list of module names")
    unasked = [m for m in stored_imports if m not in imports]
    if unasked:
        flags = " ".join(f"--import {m}" for m in unasked)
        raise ConfigError(f"{weights} names module(s) to import ({', '.join(unasked)}), which would run their code; "
                          f"if you trust them, pass {flags} (Python: imports={unasked!r})")
    raw = {"imports": stored_imports, "model": upgrade_stored_model(stored["model"]),
           "solver": stored.get("solver", {}), "data": stored.get("data", {})}
    for text in overrides:
        raw = merge_config(raw, parse_override(text))
    return validate_config(raw, imports)


def upgrade_stored_model(model: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's stored model section in today's layout.

    Checkpoints written before the shared ``rpn:`` sub-section kept the RPN's settings as the
    instance head's ``anchor_sizes``, ``aspect_ratios`` and ``rpn_*`` keys: they are nested into
    ``instance_head.rpn`` (``rpn_nms`` -> ``rpn.nms``), so such a checkpoint builds the same model.
    """
    head = model.get("instance_head")
    if not isinstance(head, dict):
        return model
    moved = {k: v for k, v in head.items() if k in ("anchor_sizes", "aspect_ratios") or k.startswith("rpn_")}
    if not moved:
        return model
    rpn = {**{k.removeprefix("rpn_"): v for k, v in moved.items()}, **(head.get("rpn") or {})}
    return {**model, "instance_head": {**{k: v for k, v in head.items() if k not in moved}, "rpn": rpn}}
