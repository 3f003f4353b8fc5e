"""Checkpoints: atomic writes, loads that never unpickle arbitrary objects, RNG capture and restore.

A training checkpoint is a dict of tensors and plain containers (``model``, ``optimizer``,
``scheduler``, ``scaler``, ``rng``, ``iteration``) saved with `torch.save` and read back only with
``torch.load(weights_only=True)``: a crafted pickle is refused, never executed.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from panoptix.errors import PanoptixError

LAST = "last_checkpoint"


class CheckpointError(PanoptixError, ValueError):
    """A checkpoint is missing, unreadable, unsafe, or does not fit the model."""


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers (``weights_only=True``), on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: refused to load; it holds objects other than tensors and plain "
                              f"containers, which could run code ({first})") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({err})") from None


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
    return path


def atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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


def last_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint named in ``output_dir/last_checkpoint``, if any."""
    marker = Path(output_dir) / LAST
    if not marker.is_file():
        return None
    path = Path(output_dir) / marker.read_text().strip()
    return path if path.is_file() else None


def model_state(obj: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The model weights of a training checkpoint (``{"model": ...}``) or a bare state dict."""
    state = obj.get("model", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected model weights (a mapping of names to tensors)")
    return {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}


def state_mismatch(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
                   ignore: tuple[str, ...] = ()) -> str:
    """How ``state`` fails to fit ``own`` (missing, unexpected and wrong-shape keys, 5 of each
    shown), or "" when it fits. Own keys ending in one of ``ignore`` may be missing."""
    missing = sorted(k for k in set(own) - set(state) if not k.endswith(ignore))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    return "; ".join(f"{len(v)} {label}: {', '.join(v[:5])}{f' (+{len(v) - 5} more)' if len(v) > 5 else ''}"
                     for label, v in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if v)


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
