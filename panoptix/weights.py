"""Reading weights safely: ``torch.load`` restricted to tensors and plain containers, and the check
that a state dict fits a model. Ground level, so that models (backbone weights) and the engine
(checkpoints, resume) share it without the models importing the engine.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from panoptix.errors import PanoptixError


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
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        first = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable torch checkpoint, truncated or corrupt? ({first})") from None


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


__all__ = ["CheckpointError", "model_state", "safe_torch_load", "state_mismatch"]
