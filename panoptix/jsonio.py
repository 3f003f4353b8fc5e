"""JSON output of results: NaN becomes null, keys become strings."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


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
