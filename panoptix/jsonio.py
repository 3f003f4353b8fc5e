"""JSON files: reading with errors that name the file; writing results (NaN becomes null, keys strings)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from panoptix.errors import PanopticFormatError


def json_safe(v: Any) -> Any:
    """A copy of ``v`` that `json.dumps` writes as strict JSON (NaN -> None)."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v


def write_json(path: str | Path, data: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(data), indent=1))
    return path


def load_json(path: str | Path) -> Any:
    """Read a JSON file, turning a missing file or bad syntax into `PanopticFormatError`."""
    path = Path(path)
    if not path.is_file():
        raise PanopticFormatError(f"{path}: JSON file not found")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise PanopticFormatError(f"{path}: malformed JSON ({err})") from err
    except UnicodeDecodeError as err:
        raise PanopticFormatError(f"{path}: not a UTF-8 JSON file ({err})") from err
