"""``panoptix evaluate``: PQ of a COCO panoptic prediction set, or pixel accuracy / mIoU / the ADE
score of label PNG folders. Starts without torch."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from panoptix.cli.options import add_data_option, print_lines, resolve_data
from panoptix.errors import PanoptixError
from panoptix.jsonio import write_json

HELP = ("COCO panoptic quality (PQ/SQ/RQ) of a prediction set; or pixel accuracy, mIoU and the ADE score of "
        "label PNG folders")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gt-json", default=None, help="the ground truth's COCO panoptic JSON")
    p.add_argument("--gt-dir", default=None, help="its PNG folder (default: --gt-json without .json)")
    add_data_option(p)
    p.add_argument("--pred-json", default=None, help="the prediction's COCO panoptic JSON")
    p.add_argument("--pred-dir", default=None, help="its PNG folder (default: --pred-json without .json)")
    p.add_argument("--workers", type=int, default=1, help="processes that decode and match images")
    p.add_argument("--out", default=None, help="results JSON (default: pq_results.json beside --pred-json)")
    p.add_argument("--strict", action="store_true",
                   help="refuse the oddities panopticapi tolerates (id-0 segments, repeated ids, ...) "
                        "instead of warning and evaluating them as panopticapi does")
    p.add_argument("--gt-labels", default=None, help="folder of ground-truth label PNGs (category id, 0 = ignore)")
    p.add_argument("--pred-labels", default=None, help="folder of predicted label PNGs, same file names "
                                                         "(panoptix predict writes them in OUTPUT/labels)")
    p.add_argument("--categories", default=None, help="label evaluation: categories JSON (default: ids 1..max)")
    p.add_argument("--miou-over", default=None, choices=("all", "present"),
                   help="label evaluation: average IoU over all classes of --categories, absent ones counting 0 "
                        "(the ADE20K benchmark; the default with --categories), or over the classes present "
                        "(the default without)")


def run(args: argparse.Namespace) -> int:
    if args.gt_labels or args.pred_labels:
        return _evaluate_labels(args)
    resolve_data(args)
    if not (args.gt_json and args.pred_json):
        raise PanoptixError("name --gt-json and --pred-json (panoptic), or --gt-labels and --pred-labels (label PNGs)")
    from panoptix.evaluation.allocator import keep_freed_memory
    from panoptix.evaluation.panoptic import evaluate_coco_panoptic, format_per_class, format_table
    from panoptix.evaluation.png_runs import available

    keep_freed_memory()
    t0 = time.time()
    results = evaluate_coco_panoptic(args.gt_json, args.pred_json, args.gt_dir, args.pred_dir,
                                     workers=args.workers, progress=True, strict=args.strict)
    seconds = time.time() - t0
    out = Path(args.out) if args.out else Path(args.pred_json).with_name("pq_results.json")
    print_lines("evaluate", "warning", results["warnings"], f" (listed in {out})")
    print(format_per_class(results))
    print()
    print(format_table(results))
    png_path = "compiled PNG path" if available() else "libspng decoding; pip install ./extras/pngruns is faster"
    print(f"{results['num_images']} images in {seconds:.2f} s ({png_path})"
          + (f"; {results['num_warnings']} warning(s), evaluated as panopticapi does (--strict refuses them)"
             if results["num_warnings"] else ""))
    write_json(out, {**results, "seconds": seconds})
    print(f"results: {out}")
    return 0


def _evaluate_labels(args: argparse.Namespace) -> int:
    """Pixel accuracy, mIoU and the ADE score of label PNG folders (scene parsing)."""
    from panoptix.data.meta import DatasetMeta
    from panoptix.evaluation.semantic import evaluate_label_folders, format_semantic_table, miou_convention

    if not (args.gt_labels and args.pred_labels):
        raise PanoptixError("label evaluation needs both --gt-labels and --pred-labels")
    t0 = time.time()
    meta = DatasetMeta.from_json(args.categories) if args.categories else None
    results = evaluate_label_folders(args.gt_labels, args.pred_labels, meta, progress=True, miou_over=args.miou_over)
    seconds = time.time() - t0
    print(format_semantic_table(results))
    print(f"{results['num_images']} images, {results['num_classes']} classes in {seconds:.2f} s")
    out = Path(args.out) if args.out else Path(args.pred_labels) / "semantic_results.json"
    write_json(out, {**results, "miou_convention": miou_convention(results), "seconds": seconds})
    print(f"results: {out}")
    return 0
