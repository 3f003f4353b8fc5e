"""Configs: YAML files (bundled ones in ``panoptix/configs``) plus ``key=value`` overrides -> one checked,
complete mapping.

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
from panoptix.registry import SYSTEMS, ConfigError, check_section, check_value, did_you_mean, import_modules, validate

SECTIONS = {"data": DataSettings, "solver": SolverSettings, "engine": EngineSettings}
DEFAULT_SYSTEM = "two_stage"


def merge_config(cfg: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` updated by the nested mapping ``update``: mappings merge key by key (mmdetection's and
    detectron2's rule), other values replace. Two exceptions replace a mapping whole: one marked
    ``_delete_: true`` (mmdetection's marker), and a dataset section whose ``format`` changes (a
    synthetic base's ``root`` means nothing to the child's COCO files)."""
    out = copy.deepcopy(cfg)
    for key, value in update.items():
        old = out.get(key)
        if isinstance(value, dict) and value.get("_delete_"):
            out[key] = copy.deepcopy({k: v for k, v in value.items() if k != "_delete_"})
        elif isinstance(old, dict) and isinstance(value, dict) and not _format_changes(old, value):
            out[key] = merge_config(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _format_changes(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return "format" in old and "format" in new and old["format"] != new["format"]


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


def resolve_config_path(path: str | Path, folder: Path | None = None) -> Path:
    """A config file: ``path`` itself, ``path`` relative to ``folder`` (a ``_base_`` entry resolves
    from the file naming it), or a bundled config by name (``panoptic_fpn_tiny``)."""
    p = Path(path)
    for candidate in ([folder / p, folder / p.with_suffix(".yaml")] if folder is not None else []) + [p]:
        if candidate.is_file():
            return candidate
    name = p.name if p.suffix else p.name + ".yaml"
    bundled = bundled_configs()
    if name in bundled:
        return bundled[name]
    raise ConfigError(f"config not found: {path}{did_you_mean(Path(name).stem, [Path(n).stem for n in bundled])} "
                      f"(a YAML file, or one of the bundled configs: panoptix config list)")


def bundled_configs() -> dict[str, Path]:
    """File name -> path of every config shipped with panoptix."""
    from importlib.resources import files

    folder = files("panoptix") / "configs"
    return {entry.name: Path(str(entry)) for entry in sorted(folder.iterdir(), key=lambda e: e.name)
            if entry.name.endswith(".yaml")}


def read_config_file(path: str | Path, folder: Path | None = None, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file with its ``_base_`` (a name or path, or a list of them) merged under it, in
    order, recursively: the result has no ``_base_`` key."""
    p = resolve_config_path(path, folder).resolve()
    if p in chain:
        raise ConfigError(f"{p}: _base_ cycle ({' -> '.join(str(c) for c in (*chain, p))})")
    data = read_yaml(p)
    bases = data.pop("_base_", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{p}: _base_ must be a config name or path, or a list of them; got {bases!r}")
    merged: dict[str, Any] = {}
    for base in bases:
        merged = merge_config(merged, read_config_file(base, p.parent, (*chain, p)))
    return _merge_layer(_with_schedule_length(merged), data)


def _merge_layer(cfg: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """`merge_config`, where a layer (a child file, the overrides) that writes its own ``steps`` or
    ``warmup_iters`` wrote them for its resulting ``max_iter``."""
    merged = merge_config(cfg, layer)
    own = layer.get("solver") if isinstance(layer.get("solver"), dict) else {}
    if ("steps" in own or "warmup_iters" in own) and "schedule_iters" not in own:
        solver = merged["solver"]
        merged["solver"] = {**solver, "schedule_iters": solver.get("max_iter", SolverSettings.max_iter)}
    return merged


def _with_schedule_length(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with ``solver.schedule_iters`` set to the ``max_iter`` its steps and warm-up were
    written for (its own, or the default), unless it says so already."""
    solver = dict(cfg.get("solver") or {})
    solver.setdefault("schedule_iters", solver.get("max_iter", SolverSettings.max_iter))
    return {**cfg, "solver": solver}


def scaled_schedule(solver: dict[str, Any]) -> dict[str, Any]:
    """A checked solver section with ``scale_schedule``: ``steps`` and ``warmup_iters`` scaled by
    ``max_iter / schedule_iters``, and ``schedule_iters`` set to ``max_iter`` (so that validating the
    stored config again changes nothing)."""
    length = solver["schedule_iters"]
    if not solver["scale_schedule"] or not length or length == solver["max_iter"]:
        return solver
    factor = solver["max_iter"] / length
    return {**solver, "steps": [round(s * factor) for s in solver["steps"]],
            "warmup_iters": round(solver["warmup_iters"] * factor), "schedule_iters": solver["max_iter"]}


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

    A bare name (``panoptic_fpn_tiny``) names a bundled config (``panoptix/configs``, package data);
    a file may name its bases with ``_base_`` (`read_config_file`).
    ``imports`` (and the config's ``imports:`` list) are modules imported first, so that the
    components they register can be named.
    """
    raw = _with_schedule_length(read_config_file(path) if path is not None else {})
    return validate_config(_merge_layer(raw, parse_overrides(overrides)), imports)


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """All ``key=value`` overrides as one nested mapping, so that their order does not matter when
    one of them changes a dataset's ``format``."""
    merged: dict[str, Any] = {}
    for text in overrides:
        merged = _merge_plain(merged, parse_override(text))
    return merged


def _merge_plain(cfg: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(cfg)
    for key, value in update.items():
        out[key] = _merge_plain(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) \
            else value
    return out


def validate_config(raw: dict[str, Any], imports: Sequence[str] = ()) -> dict[str, Any]:
    """Every section checked against its constructor, defaults filled in; `ConfigError` otherwise."""
    unknown = sorted(set(raw) - {"imports", "model", *SECTIONS})
    if unknown:
        hint = did_you_mean(unknown[0], ["imports", "model", *SECTIONS]) if len(unknown) == 1 else ""
        raise ConfigError(f"unknown config key(s) {', '.join(unknown)}{hint}; valid keys: imports, model, "
                          f"{', '.join(SECTIONS)}")
    modules = list(check_value(list[str], raw.get("imports") or [], "imports"))
    modules += [m for m in imports if m not in modules]
    import_modules(modules)
    model = dict(raw.get("model") or {})
    model.setdefault("name", DEFAULT_SYSTEM)
    cfg: dict[str, Any] = {"imports": modules, "model": validate(SYSTEMS, model, "model")}
    for key, settings in SECTIONS.items():
        cfg[key] = check_section(settings, raw.get(key) or {}, key)
    cfg["solver"] = scaled_schedule(cfg["solver"])
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
    return validate_config(merge_config(raw, parse_overrides(overrides)), imports)


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
