"""Training logs: CSV files, TensorBoard scalars and a curve PNG of the losses and the task's
headline figures (PQ, or mIoU for scene parsing; rank 0 only)."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from panoptix.engine.checkpoint import atomic_write_text

LOGS = ("train_log.csv", "eval_log.csv")


class MetricsLogger:
    """Appends rows to ``train_log.csv`` / ``eval_log.csv`` and mirrors them to TensorBoard.

    Args:
        output_dir: where the files go (TensorBoard events under ``tb/``).
        tensorboard: write TensorBoard events too.
        start_iteration: the iteration the run starts at (the checkpoint it resumed from; 0 for a
            fresh run). Rows logged after it by an earlier, killed run are dropped, and so are such
            TensorBoard events, so the logs have neither a gap nor a duplicate.
    """

    def __init__(self, output_dir: str | Path, tensorboard: bool = True, start_iteration: int = 0) -> None:
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.writer: Any | None = None
        self._fields: dict[str, list[str]] = {}
        for name in LOGS:
            truncate_rows(self.dir / name, start_iteration)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.dir / "tb"), purge_step=start_iteration + 1)

    def sync(self) -> None:
        """Flush the CSV rows to disk (before a checkpoint, so that a crash keeps every row up to it)."""
        for name in LOGS:
            if (self.dir / name).is_file():
                with open(self.dir / name, "rb+") as f:
                    os.fsync(f.fileno())
        if self.writer:
            self.writer.flush()

    def _append(self, name: str, row: dict[str, Any]) -> None:
        """Append a row; the header is read once per file (it may exist from a run being resumed)."""
        path = self.dir / name
        fields = self._fields.get(name)
        if fields is None and path.is_file():
            with open(path, newline="") as f:
                fields = next(csv.reader(f), None)
        new_keys = [k for k in row if k not in (fields or [])]
        if fields and new_keys:  # a new column: rewrite with the wider header rather than drop values
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            fields = fields + new_keys
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, fields)
                w.writeheader()
                w.writerows(rows)
        write_header = not fields
        fields = fields or list(row)
        self._fields[name] = fields
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fields)
            if write_header:
                w.writeheader()
            w.writerow(row)

    def log_train(self, iteration: int, values: dict[str, float]) -> None:
        self._append("train_log.csv", {"iteration": iteration, **values})
        if self.writer:
            for k, v in values.items():
                self.writer.add_scalar(f"train/{k}", v, iteration)

    def log_eval(self, iteration: int, values: dict[str, float]) -> None:
        self._append("eval_log.csv", {"iteration": iteration, **values})
        if self.writer:
            for k, v in values.items():
                self.writer.add_scalar(f"eval/{k}", v, iteration)

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def logged_rows(path: Path) -> int:
    """The number of data rows of a CSV log (0 when there is none)."""
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        return max(0, sum(1 for _ in csv.reader(f)) - 1)


def truncate_rows(path: Path, last_iteration: int) -> None:
    """Drop the rows of a CSV log whose ``iteration`` is above ``last_iteration`` (and a half-written
    last line), atomically; the file is left alone when nothing is dropped."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    if not fields:
        return
    keep = [r for r in rows if _iteration(r) <= last_iteration]
    if len(keep) == len(rows):
        return
    text = io.StringIO()
    w = csv.DictWriter(text, fields)
    w.writeheader()
    w.writerows(keep)
    atomic_write_text(text.getvalue(), path)


def _iteration(row: dict[str, Any]) -> float:
    """A complete row's iteration; infinity for a half-written one (so that it is always dropped)."""
    value = row.get("iteration")
    complete = isinstance(value, str) and value.isdigit() and None not in row.values()
    return int(value) if complete else math.inf


def _read(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(path, newline=""))) if path.is_file() else []


def plot_curves(output_dir: str | Path, out_png: str | Path | None = None,
                keys: Sequence[str] = ("PQ", "PQ_th", "PQ_st"), label: str = "PQ") -> Path:
    """Total loss (and each loss) against iteration, and the evaluation ``keys`` (a task's
    ``curve_keys``, called ``label``) against iteration, from the CSV logs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = Path(output_dir)
    out = Path(out_png) if out_png else d / "curves.png"
    train, evals = _read(d / "train_log.csv"), _read(d / "eval_log.csv")
    fig, (ax_loss, ax_pq) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        it = [int(r["iteration"]) for r in train]
        for key in [k for k in train[0] if k.startswith("loss")]:
            ax_loss.plot(it, [float(r[key]) for r in train], label=key, lw=2.0 if key == "loss" else 0.8)
        ax_loss.set_yscale("log")
        ax_loss.legend(fontsize=7)
    ax_loss.set(xlabel="iteration", ylabel="loss", title="training loss")
    if evals:
        it = [int(r["iteration"]) for r in evals]
        for key in keys:
            if key in evals[0]:
                ax_pq.plot(it, [float(r[key]) if r[key] not in ("", "None") else float("nan") for r in evals],
                           marker="o", label=key)
        ax_pq.legend(fontsize=8)
    ax_pq.set(xlabel="iteration", ylabel=f"{label} (%)", title=f"validation {label}")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
