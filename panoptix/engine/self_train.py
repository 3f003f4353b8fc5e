"""AinnoSeg's teacher-student rounds end to end (spec section 10).

Round 0 trains the teacher on the labelled data (or takes a given checkpoint). Each round r then
(1) pseudo-labels the unlabelled images with the teacher under TTA, low-confidence pixels ignored;
(2) trains a student from scratch on batches that mix labelled and pseudo-labelled images
(``data.labelled_ratio``); (3) optionally fine-tunes the student on the labelled data alone
(``finetune_iters`` > 0, from the student's weights); the result is the next round's teacher.
Every stage's evaluation on ``data.val`` is collected into one table.

Under ``torchrun`` every stage trains on all ranks in one process group, joined at the start and
left at the end; rank 0 writes the pseudo-labels and the summary while the others wait.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from panoptix.config import load_config
from panoptix.engine import distributed as dist


def stage_row(name: str, summary: dict[str, Any]) -> dict[str, Any]:
    """One row of the self-training table from a training summary: the stage, its checkpoint and
    its final evaluation's headline figures in percent (the task's, `Task.headline`)."""
    return {"stage": name, "checkpoint": summary.get("checkpoint"), **(summary.get("headline") or {})}


def self_train(config: str | Path, images: Path, out: Path, rounds: int = 2, threshold: float = 0.5,
               tta: str | None = None, finetune_iters: int = 0, teacher: str | None = None,
               overrides: Sequence[str] = (), imports: Sequence[str] = (),
               train: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
               device: str = "auto") -> dict[str, Any]:
    """Run the rounds; returns (and writes to ``out/self_train_summary.json``) the stages' table.

    ``train(cfg) -> training summary`` runs one training (`train_stage` by default).
    """
    from panoptix.engine.image_files import list_images

    if not 1 <= rounds <= 3:
        raise ValueError(f"rounds must be 1..3 (AinnoSeg, Wu et al. 2020: 2), got {rounds}")
    listing = list_images(images)
    dist.init_distributed()
    try:
        record = _rounds(config, images, listing, Path(out), rounds, threshold, tta, finetune_iters, teacher,
                         overrides, imports, train or train_stage, device)
    except BaseException:
        dist.cleanup(barrier=False)
        raise
    dist.cleanup()
    return record


def train_stage(cfg: dict[str, Any]) -> dict[str, Any]:
    """One stage's training; its DDP wrapper is freed after it, and the process group kept."""
    from panoptix.engine.build import build_training

    trainer = build_training(cfg)
    try:
        return trainer.train()
    finally:
        trainer.close(leave_group=False)


def _rounds(config: str | Path, images: Path, listing: Any, out: Path, rounds: int, threshold: float,
            tta: str | None, finetune_iters: int, teacher: str | None, overrides: Sequence[str],
            imports: Sequence[str], train: Callable[[dict[str, Any]], dict[str, Any]], device: str) -> dict[str, Any]:
    from panoptix.engine.build import load_ensemble
    from panoptix.engine.pseudo_label import write_pseudo_labels

    rows = []

    def run(stage: str, *extra: str) -> str:
        cfg = load_config(config, [*overrides, f"engine.output_dir={out / stage}", *extra], imports)
        summary = train(cfg)
        rows.append(stage_row(stage, summary))
        return summary["checkpoint"]

    teacher = teacher or run("teacher")
    for r in range(1, rounds + 1):
        labels = out / f"round{r}" / "pseudo"
        if dist.is_main():
            predictor, meta = load_ensemble([(teacher, 1.0)], tta, device=device, imports=imports)
            write_pseudo_labels(predictor.model, meta, listing.files, labels, threshold, teacher=teacher,
                                tta_text=tta, device=str(predictor.device), root=listing.root)
        dist.barrier()
        teacher = run(f"round{r}/student", f"data.pseudo.root={labels}")
        if finetune_iters > 0:
            teacher = run(f"round{r}/finetune", f"engine.init_weights={teacher}", f"solver.max_iter={finetune_iters}",
                          "solver.warmup_iters=0", "solver.steps=[]")
    record = {"config": str(config), "images": str(images), "rounds": rounds, "threshold": threshold, "tta": tta,
              "finetune_iters": finetune_iters, "stages": rows, "final_teacher": teacher}
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / "self_train_summary.json").write_text(json.dumps(record, indent=1))
    return record


__all__ = ["self_train", "stage_row"]
