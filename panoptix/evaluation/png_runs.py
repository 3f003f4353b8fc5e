"""The optional compiled PNG path: an image pair's (gt id, pred id) pixel counts straight from its PNG files.

``pip install ./extras/pngruns`` (a C compiler is needed; ``make test`` tries it) installs
``panoptix_pngruns``, which counts the pixel pairs that `pq_core.pair_runs` finds in two decoded id
maps without decoding either map, about twice as fast (docs/speed.md). Without it, or for any file it
does not take (see its docstring), evaluation decodes the PNGs with libspng as before; the results
are the same to the bit (tests/test_png_runs.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

try:
    import panoptix_pngruns
except ImportError:          # the optional extra is not installed
    panoptix_pngruns = None


def available() -> bool:
    """Whether the compiled path is installed."""
    return panoptix_pngruns is not None


def file_pair_counts(gt_png: Path, pred_png: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(K,) gt ids, (K,) pred ids, (K,) pixel counts of the distinct pixel pairs of two PNG files, or
    None where the compiled path is missing or does not take these files (the caller then decodes
    them, and reports any fault)."""
    if panoptix_pngruns is None:
        return None
    try:
        return panoptix_pngruns.pair_counts(gt_png.read_bytes(), pred_png.read_bytes())
    except OSError:
        return None
