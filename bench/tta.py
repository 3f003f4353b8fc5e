"""PQ and cost of panoptic test-time augmentation and weighted ensembles against the plain model,
same checkpoints, same images, same run (AntVisionPS's ensemble; spec section 9).

    python bench/tta.py --weights A.pth --data ROOT [--split val] [--limit 100] \
        [--ensemble A.pth:0.4,B.pth:1.2] [--device cpu]

Rows: the plain model; flip; scales 0.75/1/1.25; scales + flip; scales + flip + box voting; and,
with --ensemble, the weighted ensemble alone and with flip. For a scene parsing checkpoint: the
plain model, flip, AinnoSeg's seven scales 0.5-2.0 (Wu et al. 2020), and both, scored by mIoU, pixel
accuracy and the ADE score. Ratios are per image against the plain model; absolute times only mean
something on a GPU. Writes bench/out/tta.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from panoptix.data.datasets import PanopticDataset  # noqa: E402
from panoptix.engine.build import load_model  # noqa: E402
from panoptix.engine.ensemble import PanopticEnsemble, TTASettings, parse_ensemble  # noqa: E402
from panoptix.engine.predictor import Predictor, evaluate_dataset  # noqa: E402
from panoptix.engine.semantic_tta import SemanticTTA  # noqa: E402
from panoptix.engine.tasks import task_of  # noqa: E402

AINNOSEG_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def panoptic_variants(model: torch.nn.Module, args: argparse.Namespace) -> list[tuple[str, torch.nn.Module]]:
    """The plain two-stage model, its TTA views and, with --ensemble, the weighted ensemble."""
    variants: list[tuple[str, torch.nn.Module]] = [
        ("plain model", model),
        ("TTA flip", PanopticEnsemble([model], tta=TTASettings(flip=True))),
        ("TTA scales 0.75,1,1.25", PanopticEnsemble([model], tta=TTASettings((0.75, 1.0, 1.25)))),
        ("TTA scales 0.75,1,1.25 + flip", PanopticEnsemble([model], tta=TTASettings((0.75, 1.0, 1.25), True))),
        ("TTA scales + flip + box voting", PanopticEnsemble([model], tta=TTASettings((0.75, 1.0, 1.25), True, True))),
    ]
    if args.ensemble:
        members = parse_ensemble(args.ensemble)
        models = [load_model(p, device=args.device)[0] for p, _ in members]
        weights = [w for _, w in members]
        label = ", ".join(f"{Path(p).parent.name}:{w:g}" for p, w in members)
        variants += [(f"ensemble ({label})", PanopticEnsemble(models, weights)),
                     ("ensemble + TTA flip", PanopticEnsemble(models, weights, TTASettings(flip=True)))]
    return variants


def semantic_variants(model: torch.nn.Module, args: argparse.Namespace) -> list[tuple[str, torch.nn.Module]]:
    """The plain scene parser, flip, AinnoSeg's seven scales, and both (softmax averaged)."""
    return [("plain model", model), ("TTA flip", SemanticTTA(model, flip=True)),
            ("TTA scales 0.5..2 (7)", SemanticTTA(model, AINNOSEG_SCALES)),
            ("TTA scales 0.5..2 (7) + flip", SemanticTTA(model, AINNOSEG_SCALES, flip=True))]


VARIANTS = {"panoptic": panoptic_variants, "semantic": semantic_variants}  # the rows of each task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", required=True, help="root of a synthetic (COCO-layout) dataset")
    ap.add_argument("--split", default="val")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--ensemble", default=None, help="a.pth:0.4,b.pth:1.2 (each evaluated as one ensemble)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "tta.json"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    ds = PanopticDataset.synthetic(args.data, args.split)
    idx = range(min(args.limit, len(ds)))
    model, _, _, device = load_model(args.weights, device=args.device)
    task = task_of(model)
    variants = VARIANTS[task.name](model, args)
    rows = []
    for name, m in variants:
        m.eval()
        start = time.perf_counter()
        r = evaluate_dataset(Predictor(m, device, batch_size=1), ds, idx, progress=True)
        seconds = (time.perf_counter() - start) / len(idx)
        rows.append({"variant": name, **task.headline(r), "ms_per_image": 1000 * seconds})
    base = rows[0]["ms_per_image"]
    keys = [k for k in rows[0] if k not in ("variant", "ms_per_image")]
    print(f"{len(idx)} images of {args.data} ({args.split}) on {device}; cost relative to the plain model")
    print(f"{'variant':56s} " + " ".join(f"{k:>9s}" for k in keys) + f" {'ms/img':>8s} {'cost':>6s}")
    for r in rows:
        print(f"{r['variant']:56s} " + " ".join(f"{r[k]:9.1f}" for k in keys)
              + f" {r['ms_per_image']:8.1f} {r['ms_per_image'] / base:5.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"weights": args.weights, "data": args.data, "images": len(idx),
                                          "device": str(device), "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
