"""The training loop: SGD with warm-up + multistep decay, AMP on CUDA, gradient clipping, a NaN/inf
guard, periodic in-memory PQ, atomic checkpoints with exact resume, and DDP under ``torchrun``.
"""

from __future__ import annotations

import gc
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from panoptix.data.datasets import PanopticDataset
from panoptix.data.transforms import TrainTransform
from panoptix.engine import distributed as dist
from panoptix.engine.checkpoint import (
    FINAL,
    LAST,
    atomic_save,
    atomic_write_text,
    capture_rng,
    find_resume_checkpoint,
    last_checkpoint,
    load_model_weights,
    restore_rng,
    seed_all_rng,
)
from panoptix.engine.config_changes import config_changes
from panoptix.engine.fresh_start import fresh_start_note
from panoptix.engine.logger import MetricsLogger, plot_curves
from panoptix.engine.optim import build_optimizer, prepare_norms
from panoptix.engine.precision import guard_bfloat16_convolutions, precision_note, training_autocast
from panoptix.engine.predictor import Predictor, evaluate_dataset
from panoptix.engine.sampler import MixedStream, TrainingStream, stream_loader
from panoptix.engine.settings import DataSettings, EngineSettings, SolverSettings
from panoptix.engine.step_timer import StepTimer
from panoptix.engine.tasks import task_of
from panoptix.errors import PanoptixError
from panoptix.image_input import to_chw
from panoptix.jsonio import write_json
from panoptix.losses import total_loss


class TrainingDiverged(PanoptixError, RuntimeError):
    """The loss became NaN or infinite."""


def lr_factor(iteration: int, warmup_iters: int, warmup_factor: float, steps: Sequence[int], gamma: float,
              schedule: str = "step", max_iter: int = 0, poly_power: float = 0.9) -> float:
    """Linear warm-up from ``warmup_factor`` to 1 over ``warmup_iters``, times the decay: ``gamma`` per
    passed step (``"step"``, detectron2), or (1 - iteration / max_iter) ** poly_power (``"poly"``, the
    scene parsing schedule of HRNet, OCR and mmseg)."""
    if schedule == "poly":
        decay = max(0.0, 1.0 - iteration / max(1, max_iter)) ** poly_power
    else:
        decay = gamma ** sum(iteration >= s for s in steps)
    if iteration >= warmup_iters:
        return decay
    alpha = iteration / max(1, warmup_iters)
    return decay * (warmup_factor * (1 - alpha) + alpha)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


class Trainer:
    """Trains a panoptic system on a `PanopticDataset`.

    Args:
        model: follows the detection contract (returns a dict of losses in training mode) and has
            ``target_builder()`` giving its ``PanopticSample -> targets`` function: the system,
            not the trainer, decides what its targets are.
        train_set: training split (images are needed).
        data, solver, engine: settings (`panoptix.engine.settings`).
        val_set: evaluated every ``engine.eval_period`` iterations and at the end (PQ; ``engine.final_eval``).
        config: stored in the output folder for ``panoptix predict``.
        progress: show a progress bar.
        pseudo_set: pseudo-labelled images (a teacher's labels): each batch then takes
            ``data.labelled_ratio`` of its images from ``train_set`` and the rest from these.
    """

    def __init__(self, model: nn.Module, train_set: PanopticDataset, data: DataSettings, solver: SolverSettings,
                 engine: EngineSettings, val_set: PanopticDataset | None = None,
                 config: dict[str, Any] | None = None, progress: bool = True,
                 pseudo_set: PanopticDataset | None = None) -> None:
        self.rank, self.world, local_rank = dist.init_distributed()
        self.device = pick_device(engine.device, local_rank)
        self.data, self.solver, self.engine, self.config = data, solver, engine, config
        self.progress = progress
        if solver.batch_size % self.world:
            raise ValueError(f"solver.batch_size {solver.batch_size} is not divisible by {self.world} processes")
        self.batch_per_rank = solver.batch_size // self.world
        self.model = prepare_norms(model, self.world, self.device.type).to(self.device)
        transform = TrainTransform(data.min_size_train, data.max_size_train, data.flip, data.scale_range,
                                   data.crop_size, data.mosaic, data.mosaic_size)
        group = self.batch_per_rank if data.group_by_aspect_ratio and pseudo_set is None else 0
        self.stream = TrainingStream(train_set, transform, model.target_builder(), engine.seed, group_size=group)
        if pseudo_set is not None:  # a student: every batch mixes labelled and pseudo-labelled images
            pseudo = TrainingStream(pseudo_set, transform, model.target_builder(), engine.seed + 1)
            self.stream = MixedStream(self.stream, pseudo, data.labelled_ratio, self.batch_per_rank)
        self.val_set = val_set
        self.task = task_of(model)
        self.out = Path(engine.output_dir)
        self.optimizer = build_optimizer(self.model, solver)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: lr_factor(it, solver.warmup_iters, solver.warmup_factor, solver.steps,
                                                 solver.gamma, solver.lr_schedule, solver.max_iter, solver.poly_power))
        self.amp, self.amp_dtype = training_autocast(solver, self.device)
        if self.amp and self.device.type == "cpu":
            guard_bfloat16_convolutions(self.model)
        # Where small collective tensors live: the GPU under NCCL, the CPU (None) under gloo.
        self.comm_device = self.device if self.device.type == "cuda" else None
        # bfloat16 has float32's range: no loss scaling.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        self.ddp: nn.Module = self.model
        if self.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.iteration = 0
        self.history: list[dict[str, Any]] = []
        self.logger: MetricsLogger | None = None

    def close(self, barrier: bool = True, leave_group: bool = True) -> None:
        """Free the DDP wrapper and leave the process group (a no-op on one process); with
        ``leave_group=False`` only free the wrapper, for a caller that trains again in the same
        group (``panoptix self-train``) and leaves it itself. The DDP wrapper goes first: its reducer
        holds the group, and when the reducer drops the group's last reference, the group's destructor
        joins gloo's worker threads while holding the GIL. A worker that is still freeing a finished
        collective's Python-owned tensors waits for that GIL, and the process hangs at exit (seen
        under load). Dropped before ``destroy_process_group``, the last reference goes with the
        group's own handle, whose destructor releases the GIL. ``barrier``: see `distributed.cleanup`."""
        if self.ddp is not self.model:
            self.ddp = self.model
            gc.collect()  # DDP's module graph has reference cycles
        if leave_group:
            dist.cleanup(barrier)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        """Everything a checkpoint holds; ``rng`` is one RNG state per rank."""
        return {"model": self.model.state_dict(), "meta": self.stream.dataset.meta.to_json(), "config": self.config,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": rng, "iteration": self.iteration}

    def save(self) -> Path | None:
        """Atomic checkpoint of everything needed to resume exactly (rank 0 writes; every rank's RNG
        state is in it)."""
        path = None
        rng = dist.all_gather_objects(capture_rng())  # a collective: every rank takes part
        if dist.is_main():
            if self.logger is not None:
                self.logger.sync()
            path = atomic_save(self.state_dict(rng), self.out / f"model_{self.iteration:07d}.pth")
            atomic_write_text(path.name, self.out / LAST)
        dist.barrier()
        return path

    def resume(self, path: str | Path | None = None) -> bool:
        """Restore ``path``, or the newest readable checkpoint of the output folder (saying so in one
        line when that is not the one ``last_checkpoint`` names, and naming the training settings that
        differ from the checkpoint's). False when the folder has none;
        `CheckpointError` when it has some but none can be read (see `find_resume_checkpoint`)."""
        loaded = None
        if not path:
            path, loaded, note = find_resume_checkpoint(self.out)
            if path is None:
                return False
            if note and dist.is_main():
                tqdm.write(f"resume: {note}", file=sys.stderr)
        ckpt = load_model_weights(self.model, path, loaded)
        changes = config_changes(ckpt["config"], self.config) if ckpt.get("config") and self.config else []
        if changes and dist.is_main():  # a longer schedule is the usual one; none passes unsaid
            tqdm.write(f"resume: settings changed since {Path(path).name}: {'; '.join(changes)}; the run goes "
                       f"on with the new ones", file=sys.stderr)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        rng = ckpt["rng"]
        if isinstance(rng, list):  # one state per rank; a different world size reuses them in turn
            rng = rng[self.rank % len(rng)]
        restore_rng(rng)
        self.iteration = int(ckpt["iteration"])
        return True

    # ------------------------------------------------------------------ loop
    def train(self) -> dict[str, Any]:
        s, e = self.solver, self.engine
        main = dist.is_main()
        if not (e.resume and self.resume()):
            fresh = fresh_start_note(self.out, e.resume)  # refuses to overwrite saved weights
            seed_all_rng(e.seed + self.rank)
            if e.init_weights:  # a fresh run that starts from trained weights (fine-tuning)
                load_model_weights(self.model, e.init_weights)
            notes = [fresh, s.schedule_note(), precision_note(s, self.device)] if main else []
            for note in filter(None, notes):  # said once, when the run starts
                print(f"panoptix train: note: {note}", file=sys.stderr)
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.config is not None:
                write_json(self.out / "config.json", self.config)
        start = self.iteration
        logger = self.logger = MetricsLogger(self.out, e.tensorboard, start) if main else None
        loader = stream_loader(self.stream, self.batch_per_rank, start, s.max_iter, self.rank, self.world,
                               self.data.num_workers, e.seed, pin_memory=self.device.type == "cuda")
        bar = tqdm(total=s.max_iter, initial=start, desc="train", unit="it", disable=not (main and self.progress))
        self.ddp.train()
        t0, window, timer = time.time(), [], StepTimer(s.max_iter, self.device)
        for images, targets in timer.timed(loader):
            losses = self.step(images, targets)
            self.iteration += 1
            window.append(losses)
            bar.update()
            if self.iteration % e.log_period == 0 or self.iteration == s.max_iter:
                row = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                row = dist.all_reduce_mean(row, self.comm_device)
                row["lr"] = self.optimizer.param_groups[0]["lr"]
                row.update(timer.row(self.iteration))  # this rank's pace and memory
                window = []
                bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2g}")
                if logger:
                    logger.log_train(self.iteration, row)
            if e.checkpoint_period and self.iteration % e.checkpoint_period == 0 and self.iteration < s.max_iter:
                self.save()
            if e.eval_period and self.iteration % e.eval_period == 0 and self.iteration < s.max_iter:
                self._evaluate(logger, e.eval_images)
        bar.close()
        seconds = time.time() - t0
        if self.iteration > start or last_checkpoint(self.out) is None:
            self.save()
        if main and (self.iteration > start or not (self.out / FINAL).is_file()):
            # the trained weights alone, under detectron2's name (no optimizer: not for resuming)
            atomic_save({"model": self.model.state_dict(), "meta": self.stream.dataset.meta.to_json(),
                         "config": self.config, "iteration": self.iteration}, self.out / FINAL)
        in_sync = dist.replicas_in_sync(self.model, self.comm_device)
        final = self._evaluate(logger, 0) if self.engine.final_eval else None
        summary = {"iterations": self.iteration, "started_at": start, "seconds": round(seconds, 1),
                   "images_per_second": round((self.iteration - start) * s.batch_size / max(seconds, 1e-9), 2),
                   "world_size": self.world, "device": str(self.device), "replicas_in_sync": in_sync,
                   "checkpoint": str(last_checkpoint(self.out)), "final_eval": final,
                   "headline": self.task.headline(final) if final else None, "history": self.history,
                   "solver": asdict(s)}
        if main:
            logger.close()
            summary["curves"] = str(plot_curves(self.out, keys=self.task.curve_keys, label=self.task.curve_label))
            write_json(self.out / "train_summary.json", summary)
        return summary

    def step(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """One SGD step on a batch; returns the (detached) losses and their sum as ``loss``."""
        images = [to_chw(im, self.device, i) for i, im in enumerate(images)]  # the model reads uint8 itself
        targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets]
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            losses = self.ddp(images, targets)
        total = total_loss(losses)
        # One device sync for both the finiteness guard and the logged values.
        values = torch.stack([v.detach().float() for v in losses.values()] + [total.detach().float()]).tolist()
        if dist.any_rank(not math.isfinite(values[-1]), self.comm_device):
            shown = ", ".join(f"{k}={v:.4g}" for k, v in zip(losses, values))
            last = last_checkpoint(self.out)
            raise TrainingDiverged(
                f"loss is not finite at iteration {self.iteration + 1} ({shown}) on at least one process; "
                f"stopped without saving. Last good checkpoint: {last or 'none yet'}. Try a lower solver.base_lr, "
                f"a longer solver.warmup_iters or solver.clip_grad.")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.solver.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.solver.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return dict(zip([*losses, "loss"], values))

    def _evaluate(self, logger: MetricsLogger | None, limit: int) -> dict[str, Any] | None:
        if self.val_set is None:
            return None
        n = len(self.val_set) if not limit else min(limit, len(self.val_set))
        predictor = Predictor(self.model, self.device, batch_size=max(1, self.batch_per_rank), amp=self.amp,
                              amp_dtype=str(self.amp_dtype).removeprefix("torch."))
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            result = evaluate_dataset(predictor, self.val_set, range(n), progress=False)
        row = {**self.task.headline(result), "images": n}
        line = self.task.headline_line(row)
        self.history.append({"iteration": self.iteration, **row})
        if logger:
            logger.log_eval(self.iteration, row)
            tqdm.write(f"[iter {self.iteration}] {line} on {n} val images")
        return result
