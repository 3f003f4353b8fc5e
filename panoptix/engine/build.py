"""Building from a validated config: models, datasets, trainers, and predictors over checkpoints
(one model, an ensemble or TTA, two-level fusion). The engine side of `panoptix.config`, which
only configures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from panoptix.config import ConfigError, load_config, stored_config
from panoptix.data.meta import DatasetMeta
from panoptix.data.spec import DatasetSpec
from panoptix.engine.settings import DataSettings, EngineSettings, SolverSettings
from panoptix.registry import SYSTEMS, build


def build_model(cfg: dict[str, Any], meta: DatasetMeta, **context: Any):
    """The system ``cfg["model"]`` names, for the dataset's categories (context reaches from_config;
    it includes ``total_iters``, the solver's ``max_iter``, for parts that follow the schedule)."""
    solver = cfg.get("solver") or {}
    if solver.get("max_iter"):
        context.setdefault("total_iters", int(solver["max_iter"]))
    return build(SYSTEMS, cfg["model"], "model", meta=meta, **context)


def check_model_config(cfg: dict[str, Any]) -> None:
    """Build the model once on the ``meta`` device (no memory, no weights read) for a placeholder
    dataset, so that a setting its constructors refuse is a one-line `ConfigError` before any data is
    read. What depends on the real categories is checked when the real model is built."""
    import torch

    from panoptix.data.synthetic import synthetic_meta

    with torch.device("meta"):
        build_model(cfg, synthetic_meta(), weights_from_checkpoint=True, config_check=True)


def build_dataset(spec: dict[str, Any], load_images: bool = True, where: str = "data"):
    """A `PanopticDataset` from a ``data.train`` / ``data.val`` section (``where`` names it in errors);
    None when it names no data."""
    return DatasetSpec(**spec).open(load_images=load_images, where=where)


def build_trainer(cfg: dict[str, Any], model, train_set, val_set=None, progress: bool = True):
    """The `Trainer` for a model and datasets, with the config's data, solver and engine settings."""
    from panoptix.engine.trainer import Trainer

    data = DataSettings(**cfg["data"])
    pseudo_set = build_dataset(cfg["data"]["pseudo"], where="data.pseudo")
    if pseudo_set is not None and pseudo_set.meta.to_json() != train_set.meta.to_json():
        raise ConfigError("data.pseudo has different categories from data.train (was it labelled by a teacher "
                          "trained on this dataset?)")
    return Trainer(model, train_set, data, SolverSettings(**cfg["solver"]), EngineSettings(**cfg["engine"]),
                   val_set=val_set, config=cfg, progress=progress, pseudo_set=pseudo_set)


def build_training(cfg: dict[str, Any], progress: bool = True):
    """The `Trainer` of a config: its datasets opened and checked (train names data, val has the same
    categories), the model built with ``engine.seed``. What ``panoptix train`` and ``self-train`` run."""
    import torch

    check_model_config(cfg)
    train_set = build_dataset(cfg["data"]["train"], where="data.train")
    if train_set is None:
        raise ConfigError("data.train names no dataset (set data.train.format with data.train.root and "
                          "data.train.split, or data.train.json)")
    val_set = build_dataset(cfg["data"]["val"], where="data.val")
    if val_set is not None and val_set.meta.to_json() != train_set.meta.to_json():
        raise ConfigError("data.val has different categories from data.train")
    torch.manual_seed(cfg["engine"]["seed"])
    return build_trainer(cfg, build_model(cfg, train_set.meta), train_set, val_set, progress=progress)


def load_predictor(weights: str | Path, config: str | Path | None = None, overrides: Sequence[str] = (),
                   batch_size: int = 4, device: str = "auto", imports: Sequence[str] = ()):
    """(`Predictor`, `DatasetMeta`) from a training checkpoint, or from an exported ``.onnx`` file
    (run with onnxruntime on the CPU; `panoptix.engine.onnx_system.OnnxSystem`).

    The config and categories stored in the checkpoint are used unless ``config`` is given.
    """
    if Path(weights).suffix.lower() == ".onnx":
        return _onnx_predictor(weights, config, overrides, batch_size)
    model, meta, cfg, dev = load_model(weights, config, overrides, device, imports)
    return _predictor(model, dev, cfg, batch_size), meta


def _onnx_predictor(path: str | Path, config: str | Path | None, overrides: Sequence[str], batch_size: int):
    from panoptix.engine.onnx_system import OnnxSystem
    from panoptix.engine.predictor import Predictor

    if config is not None or overrides:
        raise ConfigError(f"{path} is an exported model, whole: --config and key=value overrides do not apply to it")
    model = OnnxSystem(path)
    return Predictor(model, "cpu", batch_size=batch_size), model.meta


def _predictor(model, device, cfg: dict[str, Any], batch_size: int):
    """A `Predictor` of ``model`` with the autocast settings of its config's solver."""
    from panoptix.engine.predictor import Predictor

    solver = cfg["solver"]
    return Predictor(model, device, batch_size=batch_size, amp=solver["amp"], amp_dtype=solver["amp_dtype"])


def load_ensemble(members: Sequence[tuple[str | Path, float]], tta: str | None = None, box_voting: bool = False,
                  config: str | Path | None = None, overrides: Sequence[str] = (), batch_size: int = 1,
                  device: str = "auto", imports: Sequence[str] = ()):
    """(`Predictor` over a `PanopticEnsemble`, or a `SemanticTTA` for scene parsing systems, `DatasetMeta`):
    weighted checkpoints (one for plain TTA) with test-time augmentation ``tta`` (``"scales=0.75,1,1.25
    flip"``; None: no augmentation).
    ``config`` and ``overrides`` apply to every member."""
    model, meta, cfg, dev = _load_wrapped(members, tta, box_voting, config, overrides, device, imports)
    return _predictor(model, dev, cfg, batch_size), meta


def _load_wrapped(members: Sequence[tuple[str | Path, float]], tta: str | None, box_voting: bool,
                  config: str | Path | None, overrides: Sequence[str], device: str, imports: Sequence[str]):
    """(the members wrapped by their task for ``tta`` / ensembling, `DatasetMeta`, the first member's
    config, device)."""
    from panoptix.engine.ensemble import TTASettings, tta_model

    loaded = [load_model(path, config, overrides, device, imports) for path, _ in members]
    _, meta, cfg, dev = loaded[0]
    model = tta_model([m for m, *_ in loaded], [w for _, w in members], TTASettings.parse(tta or "", box_voting),
                      crop_size=cfg["data"].get("crop_size"))
    return model.eval(), meta, cfg, dev


def load_end(spec: str, overrides: Sequence[str] = (), device: str = "auto", imports: Sequence[str] = (),
             config: str | Path | None = None):
    """(model, `DatasetMeta`, config, device) of one end of a two-level fusion: a checkpoint, or a
    weighted ensemble written as ``a.pth:0.4,b.pth:1.2`` (a `PanopticEnsemble` without augmentation)."""
    from panoptix.engine.ensemble import parse_ensemble

    members = parse_ensemble(spec)
    if members == [(spec, 1.0)]:  # a plain checkpoint path
        return load_model(spec, config, overrides, device, imports)
    return _load_wrapped(members, None, False, config, overrides, device, imports)


def load_two_level(record_path: str | Path, fusion: str | None = None, overrides: Sequence[str] = (),
                   batch_size: int = 4, device: str = "auto", imports: Sequence[str] = ()):
    """(`Predictor` over a `TwoLevelFusion`, `DatasetMeta`) from a ``panoptix fit-fusion`` record."""
    import json

    from panoptix.fusion.two_level import FusionError

    try:
        record = json.loads(Path(record_path).read_text())
    except (OSError, ValueError) as err:
        raise FusionError(f"{record_path}: cannot read the fit-fusion record ({err})") from None
    loaded = [load_end(w, overrides, device, imports) for w in record.get("ends", [])]
    if len(loaded) < 2:
        raise FusionError(f"{record_path}: names {len(loaded)} end(s); two-level fusion needs two")
    return two_level_predictor(loaded, record, fusion, batch_size)


def two_level_predictor(loaded: Sequence[tuple], record: dict[str, Any], fusion: str | None = None,
                        batch_size: int = 4):
    """(`Predictor` over a `TwoLevelFusion`, `DatasetMeta`) of ends already loaded (`load_end`'s tuples)
    and a ``fit-fusion`` record: its per-class choice, merged with ``fusion`` or the record's merge."""
    from panoptix.engine.fit_fusion import DEFAULT_MERGE, named_fusion
    from panoptix.fusion.two_level import TwoLevelFusion, choice_from_json

    ends = [m for m, *_ in loaded]
    model = TwoLevelFusion(ends, choice_from_json(record),
                           named_fusion(ends[0], fusion or record.get("fit", {}).get("fusion") or DEFAULT_MERGE))
    _, meta, cfg, dev = loaded[0]
    return _predictor(model, dev, cfg, batch_size), meta


def load_model(weights: str | Path, config: str | Path | None = None, overrides: Sequence[str] = (),
               device: str = "auto", imports: Sequence[str] = ()):
    """(model on the device in eval mode, `DatasetMeta`, config, device) from a training checkpoint.

    The config (model, solver and data sections) and categories stored in the checkpoint are used
    unless ``config`` is given; ``overrides`` apply either way. Modules that the stored config
    imports must be named in ``imports`` (see `stored_config`).
    """
    from panoptix.engine.checkpoint import load_model_weights, resolve_weights, safe_torch_load
    from panoptix.engine.trainer import pick_device

    weights = resolve_weights(weights)
    ckpt = safe_torch_load(weights)
    if config is not None:
        cfg = load_config(config, overrides, imports)
    elif isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict):
        cfg = stored_config(ckpt["config"], weights, overrides, imports)
    else:
        raise ConfigError(f"{weights} stores no config; pass --config")
    if isinstance(ckpt, dict) and ckpt.get("meta"):
        meta = DatasetMeta.from_categories(ckpt["meta"])
    else:
        ds = build_dataset(cfg["data"]["train"], load_images=False, where="data.train")
        if ds is None:
            raise ConfigError(f"{weights} stores no categories and the config names no training data")
        meta = ds.meta
    model = build_model(cfg, meta, weights_from_checkpoint=True)
    load_model_weights(model, weights, ckpt)
    dev = pick_device(device)
    return model.to(dev).eval(), meta, cfg, dev   # loaded to predict: BatchNorm on its running statistics


__all__ = ["build_model", "build_dataset", "build_trainer", "build_training", "load_model", "load_predictor",
           "load_ensemble", "load_two_level", "two_level_predictor"]
