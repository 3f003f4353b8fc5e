"""Checkpoints: atomic writes, loads that never unpickle arbitrary objects, RNG capture and restore.

A training checkpoint is a dict of tensors and plain containers (``model``, ``optimizer``,
``scheduler``, ``scaler``, ``rng``, ``iteration``) saved with `torch.save` and read back only with
``torch.load(weights_only=True)``: a crafted pickle is refused, never executed.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from panoptix.weights import CheckpointError, model_state, safe_torch_load, state_mismatch

__all__ = ["CheckpointError", "FINAL", "LAST", "atomic_save", "atomic_write_text", "capture_rng",
           "find_resume_checkpoint", "last_checkpoint", "load_model_weights", "model_state", "resolve_weights",
           "restore_rng", "safe_torch_load", "seed_all_rng", "state_mismatch"]

LAST = "last_checkpoint"
FINAL = "model_final.pth"  # the trained weights alone, written when training ends


def atomic_save(obj: Any, path: str | Path) -> Path:
    """`torch.save` to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(text: str, path: Path) -> None:
    """Write, fsync, then rename: after a crash the file holds the old text or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:   # the text as given (a CSV's \r\n too)
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform lets a folder be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def capture_rng() -> dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, numpy, random) as tensors and plain containers."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def seed_all_rng(seed: int) -> None:
    """Seed every global RNG that `capture_rng` saves (torch, CUDA, numpy, random), so that a fresh
    run is reproducible bit for bit, checkpoints included, even if a component draws from numpy's
    or Python's global generator."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuplify(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def resolve_weights(weights: str | Path) -> Path:
    """A checkpoint file, or a run folder's ``model_final.pth`` (else the checkpoint its
    ``last_checkpoint`` names); `CheckpointError` for a folder with neither."""
    path = Path(weights)
    if not path.is_dir():
        return path
    if (path / FINAL).is_file():
        return path / FINAL
    last = last_checkpoint(path)
    if last is None:
        raise CheckpointError(f"{path}: a folder with no {FINAL} and no {LAST} naming a checkpoint; pass a .pth "
                              f"file, or the output folder of panoptix train")
    return last


def last_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint named in ``output_dir/last_checkpoint``, if any."""
    marker = Path(output_dir) / LAST
    if not marker.is_file():
        return None
    path = Path(output_dir) / marker.read_text().strip()
    return path if path.is_file() else None


RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "rng", "iteration")


def _iteration_of(path: Path) -> int:
    digits = path.stem.removeprefix("model_")
    return int(digits) if digits.isdigit() else -1


def find_resume_checkpoint(output_dir: str | Path) -> tuple[Path | None, dict[str, Any] | None, str]:
    """(path, loaded content, note) of the checkpoint a run in ``output_dir`` resumes from.

    The one that ``last_checkpoint`` names, if it is readable and holds everything a resume needs
    (``RESUME_KEYS``); else the newest such ``model_*.pth`` of the folder, with a one-line note
    saying why. (None, None, "") when the folder has no checkpoint at all: a fresh run.
    `CheckpointError` naming every file tried when there are checkpoints but none is readable:
    starting again would overwrite the run.
    """
    folder = Path(output_dir)
    marker = folder / LAST
    named = folder / marker.read_text().strip() if marker.is_file() else None
    candidates = sorted((p for p in folder.glob("model_*.pth") if p.name != FINAL), key=_iteration_of, reverse=True)
    if named is not None:
        candidates = [named] + [c for c in candidates if c != named]
    if not candidates:
        return None, None, ""
    problems = []
    for path in candidates:
        if not path.is_file():
            problems.append(f"{path.name} (missing)")
            continue
        try:
            loaded = safe_torch_load(path)
        except CheckpointError as err:
            problems.append(f"{path.name} ({str(err).removeprefix(f'{path}: ')})")
            continue
        missing = [k for k in RESUME_KEYS if not isinstance(loaded, dict) or k not in loaded]
        if missing:
            problems.append(f"{path.name} (lacks {', '.join(missing)})")
            continue
        if path == named:
            return path, loaded, ""
        why = f"{problems[0]} cannot be resumed from" if problems else f"{LAST} is missing"
        return path, loaded, f"{why}; resuming from {path.name}, the newest readable checkpoint in {folder}"
    raise CheckpointError(f"{folder}: no checkpoint to resume from could be read, tried {'; '.join(problems)}; "
                          f"move them away to start afresh, or set engine.resume=false with another "
                          f"engine.output_dir")


def load_model_weights(model: torch.nn.Module, path: str | Path, loaded: Any = None) -> dict[str, Any]:
    """Load weights into ``model`` (strict: missing or unexpected keys are listed); returns the checkpoint.

    ``loaded`` is the already-read content of ``path``, to avoid reading a large file twice.
    """
    obj = safe_torch_load(path) if loaded is None else loaded
    state = model_state(obj, path)
    mismatch = state_mismatch(model.state_dict(), state)
    if mismatch:
        raise CheckpointError(f"{path} does not fit this model (is it the same config?): {mismatch}")
    model.load_state_dict(state)
    return obj if isinstance(obj, dict) else {}
