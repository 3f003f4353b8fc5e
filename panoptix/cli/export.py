"""``panoptix export``: a trained system whole (network and merge) to one ONNX graph, checked against
PyTorch with onnxruntime when it is installed."""

from __future__ import annotations

import argparse
from pathlib import Path

from panoptix.cli.options import add_model_options
from panoptix.errors import PanoptixError
from panoptix.jsonio import write_json

HELP = "export a trained system whole (network, detection, merge; the categories inside) to ONNX"
EXPORTERS = {"onnx": ".onnx"}   # --format: the file format and the suffix --out must have


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_options(p, weights="required", device=False)
    p.add_argument("--format", default="onnx", choices=tuple(EXPORTERS),
                   help="the file format of --out (its suffix must match)")
    p.add_argument("--out", default="runs/export/model.onnx", help="the exported file (and a JSON report beside it)")
    p.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"),
                   help="the image size the graph takes (resize images to it before running the graph)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison with PyTorch")
    p.add_argument("--check-input", default=None, metavar="PATH",
                   help="compare on this image or folder of images (default: one random image), resized to --size")
    p.add_argument("--check-images", type=int, default=20, help="--check-input: at most this many images")
    p.add_argument("--repeat", type=int, default=10, help="timed runs of the check")


def check_images(path: str | None, limit: int, size: tuple[int, int]):
    """The first ``limit`` images of ``path`` as (3, *size) float tensors (resized), or None."""
    if path is None:
        return None
    from panoptix.data.png import read_image
    from panoptix.engine.image_files import list_images
    from panoptix.engine.predictor import to_tensor
    from panoptix.models.preprocess import resize_image

    files = list_images(path).files[:limit]
    if not files:
        raise PanoptixError(f"--check-input {path}: no image there")
    return [resize_image(to_tensor(read_image(f), "cpu"), size) for f in files]


def run(args: argparse.Namespace) -> int:
    from panoptix.engine.build import load_model
    from panoptix.engine.export import check_onnx, export_onnx

    out = Path(args.out)
    if out.suffix.lower() != EXPORTERS[args.format]:
        raise PanoptixError(f"--out {out} does not end in {EXPORTERS[args.format]} (--format {args.format})")
    model, meta, _, _ = load_model(args.weights, args.config, args.overrides, "cpu", args.imports)
    report = export_onnx(model, out, tuple(args.size))
    print(f"wrote {out} with the {report['exporter']} exporter in {report['seconds']} s "
          f"(image size {report['size'][0]}x{report['size'][1]}; categories, input and normalisation in its metadata)")
    if report["dynamo_error"]:
        print(f"  torch.export failed first: {report['dynamo_error']}")
    if not args.no_check:
        images = check_images(args.check_input, args.check_images, tuple(report["size"]))
        check = check_onnx(model, out, repeat=args.repeat, images=images)
        report["check"] = check
        if check.get("skipped"):
            print(f"  check skipped: {check['skipped']}")
        else:
            what = f"{check['images']} image(s) of {args.check_input}" if args.check_input else "a random image"
            print(f"  onnxruntime vs PyTorch on {what}: segment maps equal on {check['equal_fraction']:.4%} "
                  f"of pixels ({check['equal_images']} of {check['images']} image(s) wholly; PyTorch found "
                  f"{check['segments']} segments); onnxruntime {check['onnxruntime_ms']:.1f} ms/image, PyTorch "
                  f"{check['torch_ms']:.1f} ms/image (CPU, median of {check['repeat']})")
    write_json(out.with_suffix(".json"), report)
    print(f"results: {out.with_suffix('.json')}")
    return 0
