"""What the claims table's diagnostic scripts share (`srm_conflicts.py`, `context_share.py`, `ciae_oracle.py`,
`pseudo_label_quality.py`): the command line over trained checkpoints and a held-out set, and the
JSON written beside the printed table."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def checkpoint_arguments(doc: str, weights_help: str, images: int, out: str) -> argparse.Namespace:
    """``--weights W [W ...] --data ROOT [--split S] [--images N] [--out JSON]``, parsed."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--weights", nargs="+", required=True, help=weights_help)
    ap.add_argument("--data", required=True, help="held-out set in COCO's layout")
    ap.add_argument("--split", default="val")
    ap.add_argument("--images", type=int, default=images)
    ap.add_argument("--out", default=out)
    return ap.parse_args()


def write_results(out: str | Path, payload: dict[str, Any]) -> None:
    """``payload`` as JSON at ``out`` (folders made), and the line that names it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1))
    print(f"results: {out}")


def rows_per_checkpoint(args: argparse.Namespace, measure: Callable[[Any, Any], dict[str, Any]]
                        ) -> tuple[Any, list[dict[str, Any]]]:
    """The held-out set of ``args`` (COCO's layout) and one row per ``--weights`` entry,
    ``{"weights": w, **measure(model, dataset)}``, each model loaded on the CPU in eval mode and
    measured without gradients."""
    import torch

    from panoptix.data.datasets import PanopticDataset
    from panoptix.engine.build import load_model

    dataset = PanopticDataset.synthetic(args.data, args.split)
    rows = []
    for weights in args.weights:
        model = load_model(weights, device="cpu")[0]   # in eval mode
        with torch.no_grad():
            rows.append({"weights": weights, **measure(model, dataset)})
    return dataset, rows
