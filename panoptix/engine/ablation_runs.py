"""The two ways ``panoptix ablate`` gets its models: one trained checkpoint whose outputs every merge
shares, or one model per merge trained with the same recipe (``--train-variants``), each built
through `build_training` like ``panoptix train``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from panoptix.config import load_config
from panoptix.engine.ablation import MergeSpec, ablate_merges
from panoptix.engine.build import build_dataset, build_training, load_model
from panoptix.fusion.needs import needs_head
from panoptix.registry import FUSIONS, ConfigError


def variant_overrides(fusion: str, model_cfg: dict[str, Any]) -> list[str]:
    """Overrides giving the model the head a merge needs and no other merge's head (``--train-variants``);
    the heads are those the registered merges declare (`panoptix.fusion.needs`)."""
    slots = dict(sorted(h for h in (needs_head(FUSIONS.get(n)) for n in FUSIONS.names()) if h))
    need = needs_head(FUSIONS.get(fusion))
    out = []
    for slot, default in slots.items():
        current = model_cfg.get(slot)
        out.append(f"model.{slot}.name={default if current is None else current['name']}" if need and need[0] == slot
                   else f"model.{slot}=null")
    return out


def evaluate_merges(model: Any, cfg: dict[str, Any], specs: Sequence[MergeSpec], device: Any, batch_size: int,
                    limit: int | None) -> dict[str, Any]:
    """`ablate_merges` of ``model`` on the config's ``data.val`` (its categories must be the model's)."""
    dataset = build_dataset(cfg["data"]["val"], where="data.val")
    if dataset is None:
        raise ConfigError("no evaluation data: pass --data ROOT (a synthetic set) or data.val.* overrides")
    if dataset.meta.to_json() != model.meta.to_json():
        raise ConfigError(f"data.val has different categories from the model's ({model.meta.name})")
    indices = list(range(len(dataset)))[:limit] if limit else None
    return ablate_merges(model, cfg["model"]["fusion"], dataset, specs, device, batch_size, indices)


def ablate_checkpoint(weights: str, config: str | None, overrides: Sequence[str], imports: Sequence[str],
                      specs: Sequence[MergeSpec], device: str, batch_size: int, limit: int | None) -> dict[str, Any]:
    """Every merge on one trained model's outputs."""
    model, _, cfg, dev = load_model(weights, config, overrides, device, imports)
    return evaluate_merges(model, cfg, specs, dev, batch_size, limit)


def ablate_variants(config: str, overrides: Sequence[str], imports: Sequence[str], specs: Sequence[MergeSpec],
                    out: Path, device: str, batch_size: int, limit: int | None) -> dict[str, Any]:
    """One model per merge (with the head it needs, ``engine.seed`` alike), trained in ``out/variants/FUSION``
    through `build_training` (its data checks included), then its merges evaluated."""
    base = load_config(config, overrides, imports)
    report: dict[str, Any] | None = None
    seconds = {}
    for fusion in dict.fromkeys(s.fusion for s in specs):
        cfg = load_config(config, [*overrides, *variant_overrides(fusion, base["model"]), f"engine.device={device}",
                                   f"engine.output_dir={out / 'variants' / fusion}"], imports)
        trainer = build_training(cfg)
        print(f"training the {fusion} variant in {cfg['engine']['output_dir']}")
        try:
            seconds[fusion] = trainer.train()["seconds"]
        except BaseException:
            trainer.close(barrier=False)
            raise
        trainer.close()
        part = evaluate_merges(trainer.model, cfg, [s for s in specs if s.fusion == fusion], trainer.device,
                               batch_size, limit)
        report = part if report is None else {**report, "rows": report["rows"] + part["rows"]}
    assert report is not None  # parse_merges refuses an empty list
    order = [s.name for s in specs]
    report["rows"].sort(key=lambda r: order.index(r["merge"]))
    report["training_seconds"] = seconds
    return report
