"""Configs: YAML files in ``configs/`` plus ``key=value`` overrides, mapped onto constructors here.

This is the one place that knows both the config layout and the constructors' keyword arguments;
modules never read a config themselves.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from panoptix.data.meta import DatasetMeta
from panoptix.errors import PanoptixError

_DATASET = {"format": "coco", "json": None, "png_dir": None, "image_dir": None, "root": None, "split": None}

DEFAULTS: dict[str, Any] = {
    "model": {
        "system": "two_stage",
        "backbone": {"name": "resnet50", "norm": "frozen_bn", "freeze_at": 2, "weights": None, "channels": None,
                     "stem_width": None},
        "neck": {"out_channels": 256, "deformable_levels": []},
        "rpn": {"anchor_sizes": [32, 64, 128, 256, 512], "aspect_ratios": [0.5, 1.0, 2.0], "fg_iou": 0.7,
                "bg_iou": 0.3, "batch_size": 256, "positive_fraction": 0.5, "pre_nms_train": 2000,
                "pre_nms_test": 1000, "post_nms_train": 2000, "post_nms_test": 1000, "nms": 0.7},
        "roi": {"fg_iou": 0.5, "bg_iou": 0.5, "batch_size": 512, "positive_fraction": 0.25, "score_thresh": 0.05,
                "nms": 0.5, "detections_per_img": 100, "box_fc_dim": 1024, "box_convs": 0, "mask_conv_dim": 256,
                "mask_convs": 4, "head_norm": ""},
        "semantic": {"head": "fpn", "variant": "stuff_things", "channels": 128, "deform_convs": 2,
                     "loss_weight": 0.25},
        "fusion": {"score_thresh": 0.5, "overlap_thresh": 0.5, "stuff_min_area": 0.0038},
        "input": {"pixel_mean": [0.485, 0.456, 0.406], "pixel_std": [0.229, 0.224, 0.225], "min_size_test": 800,
                  "max_size_test": 1333, "size_divisibility": 32},
    },
    "data": {
        "train": dict(_DATASET, split="train"),
        "val": dict(_DATASET, split="val"),
        "min_size_train": [640, 672, 704, 736, 768, 800],
        "max_size_train": 1333,
        "flip": 0.5,
        "num_workers": 2,
    },
    "solver": {"batch_size": 16, "base_lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4, "max_iter": 90000,
               "warmup_iters": 1000, "warmup_factor": 0.001, "steps": [60000, 80000], "gamma": 0.1,
               "clip_grad": 0.0, "amp": True},
    "engine": {"output_dir": "runs/train", "seed": 0, "eval_period": 0, "eval_images": 0,
               "checkpoint_period": 5000, "log_period": 20, "resume": True, "device": "auto"},
}


class ConfigError(PanoptixError, ValueError):
    """An unknown key, a bad override or a config file that cannot be read."""


def _merge(base: dict, update: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if key not in out:
            raise ConfigError(f"unknown config key {where + str(key)!r}; valid keys here: {', '.join(sorted(out))}")
        if isinstance(out[key], dict) and out[key] and isinstance(value, dict):
            out[key] = _merge(out[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def merge_config(cfg: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` updated by the nested mapping ``update`` (a stored config, say); unknown keys raise."""
    return _merge(cfg, update, "")


def parse_override(text: str) -> dict[str, Any]:
    """``"solver.base_lr=0.01"`` -> ``{"solver": {"base_lr": 0.01}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw else None
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Defaults <- YAML file <- ``key=value`` overrides. Unknown keys raise `ConfigError`.

    A bare name (``panoptic_fpn_tiny``) is looked up in the repository's ``configs/`` folder.
    """
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        p = resolve_config_path(path)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML ({err})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
        cfg = _merge(cfg, data, "")
    for text in overrides:
        cfg = _merge(cfg, parse_override(text), "")
    return cfg


def resolve_config_path(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    bundled = Path(__file__).resolve().parent.parent / "configs" / (p.name if p.suffix else p.name + ".yaml")
    if bundled.is_file():
        return bundled
    raise ConfigError(f"config not found: {path}")


# --------------------------------------------------------------------------- model
def build_model(cfg: dict[str, Any], meta: DatasetMeta):
    """The system named by ``cfg["model"]["system"]`` for the dataset's categories."""
    builders = {"two_stage": _two_stage}
    name = cfg["model"]["system"]
    if name not in builders:
        raise ConfigError(f"unknown model.system {name!r}; available: {', '.join(builders)}")
    return builders[name](cfg["model"], meta)


def _two_stage(m: dict[str, Any], meta: DatasetMeta):
    from panoptix.data.targets import num_semantic_classes
    from panoptix.models.backbones import TimmBackbone
    from panoptix.models.heads.rcnn import MaskRCNNBranch
    from panoptix.models.heads.semantic import SemanticHead
    from panoptix.models.necks import FPN
    from panoptix.models.systems.two_stage import TwoStagePanoptic

    b, n, r, o, s, f, i = (m[k] for k in ("backbone", "neck", "rpn", "roi", "semantic", "fusion", "input"))
    backbone = TimmBackbone(b["name"], norm=b["norm"], freeze_at=b["freeze_at"], weights=b["weights"],
                            channels=b["channels"], stem_width=b["stem_width"])
    neck = FPN(backbone.out_channels, n["out_channels"], n["deformable_levels"])
    instance = MaskRCNNBranch(
        n["out_channels"], meta.num_things, anchor_sizes=r["anchor_sizes"], aspect_ratios=r["aspect_ratios"],
        rpn_fg_iou=r["fg_iou"], rpn_bg_iou=r["bg_iou"], rpn_batch_size=r["batch_size"],
        rpn_positive_fraction=r["positive_fraction"], rpn_pre_nms_train=r["pre_nms_train"],
        rpn_pre_nms_test=r["pre_nms_test"], rpn_post_nms_train=r["post_nms_train"],
        rpn_post_nms_test=r["post_nms_test"], rpn_nms=r["nms"], box_fg_iou=o["fg_iou"], box_bg_iou=o["bg_iou"],
        box_batch_size=o["batch_size"], box_positive_fraction=o["positive_fraction"],
        box_score_thresh=o["score_thresh"], box_nms=o["nms"], detections_per_img=o["detections_per_img"],
        box_fc_dim=o["box_fc_dim"], box_convs=o["box_convs"], mask_conv_dim=o["mask_conv_dim"],
        mask_convs=o["mask_convs"], head_norm=o["head_norm"])
    semantic = SemanticHead(n["out_channels"], num_semantic_classes(meta, s["variant"]), kind=s["head"],
                            channels=s["channels"], deform_convs=s["deform_convs"])
    return TwoStagePanoptic(backbone, neck, instance, semantic, meta, semantic_variant=s["variant"],
                            seg_loss_weight=s["loss_weight"], pixel_mean=i["pixel_mean"], pixel_std=i["pixel_std"],
                            min_size_test=i["min_size_test"], max_size_test=i["max_size_test"],
                            size_divisibility=i["size_divisibility"], score_thresh=f["score_thresh"],
                            overlap_thresh=f["overlap_thresh"], stuff_min_area=f["stuff_min_area"])


# --------------------------------------------------------------------------- data and engine
def build_dataset(spec: dict[str, Any], load_images: bool = True):
    """A `PanopticDataset` from a ``data.train`` / ``data.val`` entry; None when it names no data."""
    from panoptix.data.datasets import PanopticDataset

    fmt = spec.get("format")
    if fmt == "coco":
        if not spec.get("json"):
            return None
        return PanopticDataset.coco(spec["json"], spec.get("png_dir"), spec.get("image_dir"), load_images=load_images)
    if fmt in ("synthetic", "cityscapes", "ade20k"):
        if not spec.get("root"):
            return None
        return getattr(PanopticDataset, fmt)(spec["root"], spec["split"], load_images=load_images)
    raise ConfigError(f"unknown data format {fmt!r}; expected coco, synthetic, cityscapes or ade20k")


def build_trainer(cfg: dict[str, Any], model, train_set, val_set=None, progress: bool = True):
    """The `Trainer` for a model and datasets, with the config's solver and engine settings."""
    from panoptix.data.transforms import TrainTransform
    from panoptix.engine.trainer import EngineSettings, SolverSettings, Trainer

    d, s, e = cfg["data"], cfg["solver"], cfg["engine"]
    transform = TrainTransform(d["min_size_train"], d["max_size_train"], d["flip"])
    solver = SolverSettings(**s)
    engine = EngineSettings(**e, num_workers=d["num_workers"], progress=progress)
    return Trainer(model, train_set, transform, cfg["model"]["semantic"]["variant"], solver, engine,
                   val_set=val_set, config=cfg)


def load_predictor(weights: str | Path, config: Optional[str | Path] = None, overrides: Sequence[str] = (),
                   batch_size: int = 4, device: str = "auto"):
    """(`Predictor`, `DatasetMeta`) from a training checkpoint.

    The config and categories stored in the checkpoint are used unless ``config`` is given.
    """
    from panoptix.data.meta import DatasetMeta
    from panoptix.engine.checkpoint import load_model_weights, safe_torch_load
    from panoptix.engine.predictor import Predictor
    from panoptix.engine.trainer import pick_device

    ckpt = safe_torch_load(weights)
    if config is not None:
        cfg = load_config(config, overrides)
    elif isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict):
        cfg = merge_config(load_config(None), {"model": ckpt["config"]["model"]})
        for text in overrides:
            cfg = merge_config(cfg, parse_override(text))
    else:
        raise ConfigError(f"{weights} stores no config; pass --config")
    if isinstance(ckpt, dict) and ckpt.get("meta"):
        meta = DatasetMeta.from_categories(ckpt["meta"])
    else:
        ds = build_dataset(cfg["data"]["train"], load_images=False)
        if ds is None:
            raise ConfigError(f"{weights} stores no categories and the config names no training data")
        meta = ds.meta
    cfg["model"]["backbone"]["weights"] = None  # the checkpoint holds them
    model = build_model(cfg, meta)
    load_model_weights(model, weights, ckpt)
    dev = pick_device(device)
    return Predictor(model.to(dev), dev, batch_size=batch_size, amp=cfg["solver"]["amp"]), meta
