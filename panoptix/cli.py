"""The ``panoptix`` command: synth, perturb, evaluate, viz, train, predict, pseudo-label, self-train, fit-fusion,
ablate, export, demo.

Every command shows progress on long work, ends with a readable summary and writes its
machine-readable results as JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from panoptix.errors import PanoptixError
from panoptix.jsonio import write_json

# Each command imports what it needs, so that ``evaluate``, ``synth``, ``perturb`` and ``viz`` (and
# ``--help``) start without torch; tests/test_cli.py checks it.
_SHOWN_LINES = 20


def _print_lines(command: str, kind: str, lines: Sequence[str], where: str = "") -> None:
    """One ``panoptix CMD: KIND: ...`` line per item on stderr, the first 20 of them."""
    for line in lines[:_SHOWN_LINES]:
        print(f"panoptix {command}: {kind}: {line}", file=sys.stderr)
    if len(lines) > _SHOWN_LINES:
        print(f"panoptix {command}: ... and {len(lines) - _SHOWN_LINES} more {kind}s{where}", file=sys.stderr)


# --------------------------------------------------------------------------- synth
def cmd_synth(args: argparse.Namespace) -> int:
    from panoptix.data.synthetic import SynthConfig, write_synthetic

    t0 = time.time()
    cfg = SynthConfig(size=args.size, width=args.width, occlusion=args.occlusion)
    summary = write_synthetic(args.out, {"train": args.train, "val": args.val}, seed=args.seed, cfg=cfg,
                              workers=args.workers)
    summary["seconds"] = round(time.time() - t0, 2)
    write_json(Path(args.out) / "synth_summary.json", summary)
    for split, s in summary["splits"].items():
        print(f"{split:5s}: {s['images']} images, {s['segments']} segments ({s['crowd']} crowd)")
    print(f"wrote {args.out} in {summary['seconds']} s (summary: {Path(args.out) / 'synth_summary.json'})")
    return 0


# --------------------------------------------------------------------------- perturb
def cmd_perturb(args: argparse.Namespace) -> int:
    from panoptix.data.perturb import write_perturbed

    n = write_perturbed(args.gt_json, args.gt_dir, args.out_json, args.out_dir, seed=args.seed,
                        strength=args.strength)
    print(f"wrote a perturbed prediction set of {n} images: {args.out_json}")
    return 0


# --------------------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    from panoptix.evaluation.allocator import keep_freed_memory
    from panoptix.evaluation.panoptic import evaluate_coco_panoptic, format_table

    if args.gt_labels or args.pred_labels:
        return _evaluate_labels(args)
    if not (args.gt_json and args.pred_json):
        raise PanoptixError("name --gt-json and --pred-json (panoptic), or --gt-labels and --pred-labels (label PNGs)")
    keep_freed_memory()
    t0 = time.time()
    results = evaluate_coco_panoptic(args.gt_json, args.pred_json, args.gt_dir, args.pred_dir,
                                     workers=args.workers, progress=True, strict=args.strict)
    seconds = time.time() - t0
    out = Path(args.out) if args.out else Path(args.pred_json).with_name("pq_results.json")
    _print_lines("evaluate", "warning", results["warnings"], f" (listed in {out})")
    print(format_table(results))
    print(f"{results['num_images']} images in {seconds:.2f} s"
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


# --------------------------------------------------------------------------- viz
def cmd_viz(args: argparse.Namespace) -> int:
    from PIL import Image
    from tqdm import tqdm

    from panoptix.data.formats import load_coco_panoptic, read_sample
    from panoptix.viz import overlay, side_by_side

    meta, gt_records = load_coco_panoptic(args.gt_json, args.gt_dir, args.images)
    preds = {}
    if args.pred_json:
        _, pred_records = load_coco_panoptic(args.pred_json, args.pred_dir, meta=meta)
        preds = {r.image_id: r for r in pred_records}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = gt_records[: args.limit] if args.limit else gt_records
    written = []
    for rec in tqdm(records, desc="viz", unit="img"):
        gt = read_sample(rec, meta, load_image=args.images is not None)
        name = Path(rec.png_path).stem + ".png"
        if rec.image_id in preds:
            pred = read_sample(preds[rec.image_id], meta, load_image=False)
            img = side_by_side(gt.image, (gt.ids, gt.segments), (pred.ids, pred.segments), meta, labels=args.labels)
        else:
            img = overlay(gt.image, gt.ids, gt.segments, meta, labels=args.labels)
        Image.fromarray(img).save(out / name)
        written.append(name)
    write_json(out / "viz_index.json", {"images": written, "with_prediction": bool(preds)})
    print(f"wrote {len(written)} overlay(s) to {out}")
    return 0


# --------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from panoptix.config import load_config
    from panoptix.engine.build import build_training

    trainer = build_training(load_config(args.config, args.overrides, args.imports))
    try:
        summary = trainer.train()
    except BaseException:
        trainer.close(barrier=False)
        raise
    trainer.close()
    if trainer.rank == 0:
        print(f"trained {summary['iterations']} iterations ({summary['started_at']} resumed) in "
              f"{summary['seconds']} s, {summary['images_per_second']} images/s on {summary['device']} "
              f"x{summary['world_size']}")
        final = summary["final_eval"]
        if final:
            print(trainer.task.table(final))
        print(f"checkpoint: {summary['checkpoint']}; curves: {summary.get('curves')}; "
              f"summary: {trainer.out / 'train_summary.json'}")
    return 0


# --------------------------------------------------------------------------- predict
def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from panoptix.engine.build import load_predictor
    from panoptix.engine.image_files import image_ids_from_gt, list_images
    from panoptix.engine.predictor import predict_files

    t0 = time.time()
    if args.two_level:
        from panoptix.engine.build import load_two_level

        predictor, meta = load_two_level(args.two_level, args.fusion, args.overrides, args.batch_size, args.device,
                                         args.imports)
    elif args.ensemble or args.tta or args.box_voting:
        from panoptix.engine.build import load_ensemble
        from panoptix.engine.ensemble import parse_ensemble

        members = parse_ensemble(args.ensemble) if args.ensemble else []
        if args.weights:
            members = [(args.weights, 1.0)] + members
        predictor, meta = load_ensemble(members, args.tta, args.box_voting, args.config, args.overrides,
                                        args.batch_size, args.device, args.imports)
    elif args.weights:
        predictor, meta = load_predictor(args.weights, args.config, args.overrides, args.batch_size, args.device,
                                         args.imports)
    else:
        raise PanoptixError("name a checkpoint with --weights, or several with --ensemble")
    listing = list_images(args.input, args.recursive)
    skipped = list(listing.skipped)
    _print_lines("predict", "warning", [str(s) for s in skipped])
    _print_lines("predict", "note", listing.folders_note())
    ids = image_ids_from_gt(args.gt_json) if args.gt_json else None
    run = predict_files(predictor, meta, listing.files, args.output, image_ids=ids, overlays=not args.no_overlays,
                        warn=lambda skip: tqdm.write(f"panoptix predict: warning: {skip}", file=sys.stderr),
                        root=listing.root)
    _print_lines("predict", "note", run.notes)
    skipped += run.skipped
    seconds = time.time() - t0
    summary = Path(args.output) / "predict_summary.json"
    write_json(summary, {"images": run.written, "skipped": [s.to_json() for s in skipped], "seconds": seconds,
                         "weights": str(args.weights), "ensemble": args.ensemble, "tta": args.tta,
                         "box_voting": args.box_voting, "predictions": str(run.json_path),
                         "notes": listing.folders_note() + run.notes})
    overlays = "" if args.no_overlays else f", overlays in {Path(args.output) / 'overlays'}"
    print(f"predicted {run.written} image(s) in {seconds:.1f} s: {run.json_path} (+ PNGs in "
          f"{run.json_path.with_suffix('')}{overlays})" + (f"; skipped {len(skipped)} file(s), listed in {summary}"
                                                           if skipped else ""))
    if run.written == 0:
        raise PanoptixError(f"{args.input}: no image could be read, nothing was predicted (see {summary})")
    if skipped and args.strict:
        raise PanoptixError(f"{len(skipped)} file(s) of {args.input} could not be predicted (--strict); "
                            f"the others were written; all are listed in {summary}")
    return 0


# --------------------------------------------------------------------------- pseudo-label, self-train
def cmd_pseudo_label(args: argparse.Namespace) -> int:
    """A teacher's pseudo-labels for unlabelled images (seed 003), as a label folder."""
    from panoptix.engine.build import load_ensemble
    from panoptix.engine.image_files import list_images
    from panoptix.engine.pseudo_label import RECORD, write_pseudo_labels

    t0 = time.time()
    predictor, meta = load_ensemble([(args.weights, 1.0)], args.tta, device=args.device, imports=args.imports)
    if not hasattr(predictor.model, "probabilities"):   # what write_pseudo_labels reads
        raise PanoptixError(f"{args.weights} is not a scene parsing system; pseudo-labels come from semantic teachers")
    listing = list_images(args.images, args.recursive)
    _print_lines("pseudo-label", "warning", [str(s) for s in listing.skipped])
    _print_lines("pseudo-label", "note", listing.folders_note())
    record = write_pseudo_labels(predictor.model, meta, listing.files, args.out, args.threshold, args.split,
                                 teacher=args.weights, tta_text=args.tta, device=str(predictor.device),
                                 root=listing.root)
    _print_lines("pseudo-label", "note", record["notes"])
    print(f"pseudo-labelled {record['images']} image(s) in {time.time() - t0:.1f} s at threshold {args.threshold}: "
          f"{100 * record['ignored_fraction']:.1f}% of pixels ignored; dataset: format ade20k, root {args.out}, "
          f"split {args.split} (record: {Path(args.out) / RECORD})")
    return 0


def cmd_self_train(args: argparse.Namespace) -> int:
    """Teacher -> pseudo-labels -> student (-> fine-tune) rounds, end to end (seed 003)."""
    from panoptix.engine.self_train import self_train

    record = self_train(args.config, Path(args.images), Path(args.out), args.rounds, args.threshold, args.tta,
                        args.finetune_iters, args.teacher, args.overrides, args.imports, device=args.device)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return 0
    keys = list(dict.fromkeys(k for row in record["stages"] for k in row if k not in ("stage", "checkpoint")))
    print(f"{'stage':24s} " + " ".join(f"{k:>9s}" for k in keys))
    for row in record["stages"]:
        print(f"{row['stage']:24s} " + " ".join(f"{row.get(k, float('nan')):9.1f}" for k in keys))
    print(f"final teacher: {record['final_teacher']}; summary: {Path(args.out) / 'self_train_summary.json'}")
    return 0


# --------------------------------------------------------------------------- fit-fusion
def cmd_fit_fusion(args: argparse.Namespace) -> int:
    """Seed 001's two-level fusion: the per-class choice of instance end, and its table."""
    from panoptix.engine.build import load_model
    from panoptix.data.datasets import PanopticDataset
    from panoptix.engine.fit_fusion import fit_two_level

    t0 = time.time()
    loaded = [load_model(w, None, args.overrides, args.device, args.imports) for w in args.ends]
    ends, device = [m for m, *_ in loaded], loaded[0][3]
    fit_set = PanopticDataset.synthetic(args.fit_data, args.fit_split) if args.fit_data else None
    if fit_set is None:
        raise PanoptixError("--fit-data: name the held-out set the per-class choice is fitted on")
    test_set = PanopticDataset.synthetic(args.test_data, args.test_split) if args.test_data else None
    record = fit_two_level(ends, [str(w) for w in args.ends], fit_set, test_set, device, args.fusion, args.limit,
                           args.batch_size)
    record["seconds"] = round(time.time() - t0, 1)
    write_json(args.out, record)
    width = max(len(c["name"]) for c in record["classes"])
    print(f"per-class choice of instance end (PQ on {record['fit']['images']} held-out images of {args.fit_data}):")
    for c in record["classes"]:
        scores = "  ".join(f"{100 * v:5.1f}" for v in c["scores"])
        print(f"  {c['name']:{width}s}  end {c['end']}  (PQ per end: {scores})")
    for row in record.get("table", []):
        print(f"{row['system']:48s} PQ {row['PQ']:5.1f}  PQ_th {row['PQ_th']:5.1f}  PQ_st {row['PQ_st']:5.1f}")
    print(f"wrote {args.out} in {record['seconds']} s; predict with it: panoptix predict --two-level {args.out}")
    return 0


# --------------------------------------------------------------------------- ablate
def _variant_overrides(fusion: str, model_cfg: dict) -> list[str]:
    """Overrides giving the model the head a merge needs and no other merge's head (``--train-variants``);
    the heads are those the registered merges declare (`panoptix.fusion.needs`)."""
    from panoptix.fusion.needs import needs_head
    from panoptix.registry import FUSIONS

    slots = dict(sorted(h for h in (needs_head(FUSIONS.get(n)) for n in FUSIONS.names()) if h))
    need = needs_head(FUSIONS.get(fusion))
    out = []
    for slot, default in slots.items():
        current = model_cfg.get(slot)
        out.append(f"model.{slot}.name={default if current is None else current['name']}" if need and need[0] == slot
                   else f"model.{slot}=null")
    return out


def cmd_ablate(args: argparse.Namespace) -> int:
    """Every merge on one trained model (or, with --train-variants, one model per merge)."""
    import torch

    from panoptix.config import ConfigError, load_config
    from panoptix.engine.build import build_dataset, build_model, build_trainer, load_model
    from panoptix.engine.ablation import ablate_merges, markdown_table, parse_merges
    from panoptix.engine.trainer import pick_device

    specs = parse_merges(args.fusions, args.crf_backend)
    overrides = list(args.overrides)
    if args.data:
        overrides += [f"data.val.root={args.data}", f"data.train.root={args.data}"]
    out = Path(args.out)
    t0 = time.time()

    def evaluate(model, cfg, rows_specs):
        dataset = build_dataset(cfg["data"]["val"])
        if dataset is None:
            raise ConfigError("no evaluation data: pass --data ROOT (a synthetic set) or data.val.* overrides")
        if dataset.meta.to_json() != model.meta.to_json():
            raise ConfigError(f"data.val has different categories from the model's ({model.meta.name})")
        indices = list(range(len(dataset)))[: args.limit] if args.limit else None
        return ablate_merges(model, cfg["model"]["fusion"], dataset, rows_specs, device, args.batch_size, indices)

    if args.train_variants:
        if not args.config:
            raise ConfigError("--train-variants needs --config (the recipe every variant is trained with)")
        device = pick_device(args.device)
        base = load_config(args.config, overrides, args.imports)
        report, trained = None, {}
        for fusion in dict.fromkeys(s.fusion for s in specs):
            cfg = load_config(args.config, overrides + _variant_overrides(fusion, base["model"])
                              + [f"engine.output_dir={out / 'variants' / fusion}"], args.imports)
            train_set = build_dataset(cfg["data"]["train"])
            if train_set is None:
                raise ConfigError("--train-variants needs training data: --data ROOT or data.train.* overrides")
            print(f"training the {fusion} variant in {cfg['engine']['output_dir']}")
            torch.manual_seed(cfg["engine"]["seed"])
            model = build_model(cfg, train_set.meta)
            trained[fusion] = build_trainer(cfg, model, train_set, build_dataset(cfg["data"]["val"])).train()
            part = evaluate(model, cfg, [s for s in specs if s.fusion == fusion])
            report = part if report is None else {**report, "rows": report["rows"] + part["rows"]}
        order = [s.name for s in specs]
        report["rows"].sort(key=lambda r: order.index(r["merge"]))
        report["training_seconds"] = {k: v["seconds"] for k, v in trained.items()}
        title = f"one model per merge, trained with {args.config}"
    else:
        if not args.weights:
            raise ConfigError("pass --weights (a checkpoint trained with the heads the merges need), "
                              "or --train-variants with --config")
        model, _, cfg, device = load_model(args.weights, args.config, overrides, args.device, args.imports)
        report = evaluate(model, cfg, specs)
        title = f"one model ({args.weights}), every merge on the same predictions"
    report.update({"weights": args.weights, "config": args.config, "fusions": [s.name for s in specs],
                   "train_variants": bool(args.train_variants), "seconds": round(time.time() - t0, 1)})
    table = markdown_table(report, title)
    write_json(out / "ablation.json", report)
    (out / "ablation.md").write_text(table + "\n")
    print(table)
    print(f"results: {out / 'ablation.json'}, {out / 'ablation.md'}")
    return 0


# --------------------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    """A trained CIAE system to one ONNX graph, checked against PyTorch with onnxruntime when installed."""
    from panoptix.engine.build import load_model
    from panoptix.engine.export import check_onnx, export_onnx

    exporters = {"onnx": (".onnx", export_onnx)}   # --format: the file format, its suffix and exporter
    suffix, export = exporters[args.format]
    out = Path(args.out)
    if out.suffix.lower() != suffix:
        raise PanoptixError(f"--out {out} does not end in {suffix} (--format {args.format})")
    model, meta, _, _ = load_model(args.weights, args.config, args.overrides, "cpu", args.imports)
    report = export(model, out, tuple(args.size))
    print(f"wrote {out} with the {report['exporter']} exporter in {report['seconds']} s "
          f"(image size {report['size'][0]}x{report['size'][1]})")
    if report["dynamo_error"]:
        print(f"  torch.export failed first: {report['dynamo_error']}")
    if not args.no_check:
        check = check_onnx(model, out, repeat=args.repeat)
        report["check"] = check
        if check.get("skipped"):
            print(f"  check skipped: {check['skipped']}")
        else:
            print(f"  onnxruntime vs PyTorch on a random image: segment maps equal on {check['equal_fraction']:.4%} "
                  f"of pixels; onnxruntime {check['onnxruntime_ms']:.1f} ms/image, PyTorch {check['torch_ms']:.1f} "
                  f"ms/image (CPU, median of {check['repeat']})")
    write_json(out.with_suffix(".json"), report)
    print(f"results: {out.with_suffix('.json')}")
    return 0


# --------------------------------------------------------------------------- demo
class PhaseClock:
    """Wall seconds of consecutive phases: ``lap(name)`` closes the phase that began at the last lap."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._t, 1)
        self._t = now


def cmd_demo(args: argparse.Namespace) -> int:
    """Synthetic set (if absent) -> train the tiny system -> predict val -> PQ -> overlays and curves."""
    from panoptix.data.synthetic import synthetic_paths
    from panoptix.engine.checkpoint import last_checkpoint
    from panoptix.evaluation.panoptic import evaluate_coco_panoptic, format_table

    out = Path(args.out)
    data = out / "synthetic"
    val = synthetic_paths(data, "val")
    clock = PhaseClock()
    if not val["gt_json"].is_file():
        print(f"[1/5] generating the synthetic dataset in {data}")
        cmd_synth(build_parser().parse_args(["synth", "--out", str(data), "--train", str(args.train), "--val",
                                             str(args.val), "--size", str(args.size), "--seed", str(args.seed)]))
    else:
        print(f"[1/5] synthetic dataset present: {data}")
    clock.lap("data")
    train_dir = out / "train"
    print(f"[2/5] training {args.config} on CPU-sized settings (resumes if interrupted): {train_dir}")
    overrides = [f"data.train.root={data}", f"data.val.root={data}", f"engine.output_dir={train_dir}",
                 *args.overrides]
    imports = [f"--import={m}" for m in args.imports]
    cmd_train(build_parser().parse_args(["train", "--config", args.config, *imports, *overrides]))
    clock.lap("training")
    pred_dir = out / "predictions"
    print("[3/5] predicting the val split")
    cmd_predict(build_parser().parse_args(["predict", "--weights", str(last_checkpoint(train_dir)), "--input",
                                           str(val["image_dir"]), "--output", str(pred_dir), "--gt-json",
                                           str(val["gt_json"]), "--no-overlays", *imports]))
    clock.lap("prediction")
    pred_json = pred_dir / "panoptic_pred.json"
    print("[4/5] evaluating PQ")
    results = evaluate_coco_panoptic(val["gt_json"], pred_json, val["gt_dir"], workers=2, progress=True)
    write_json(out / "pq_results.json", results)
    clock.lap("evaluation")
    print("[5/5] writing overlays (ground truth | prediction)")
    cmd_viz(build_parser().parse_args(["viz", "--gt-json", str(val["gt_json"]), "--images", str(val["image_dir"]),
                                       "--pred-json", str(pred_json), "--out", str(out / "overlays"),
                                       "--limit", str(args.overlays)]))
    clock.lap("overlays")
    write_json(out / "demo_summary.json", {"config": args.config, "seconds": clock.laps,
                                           "pq": {k: results[k] for k in ("All", "Things", "Stuff")}})
    print()
    print(format_table(results))
    print("wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in clock.laps.items()))
    print(f"PQ results: {out / 'pq_results.json'}; overlays: {out / 'overlays'}; "
          f"training curve: {train_dir / 'curves.png'}")
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="panoptix", description="Panoptic segmentation toolkit")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a synthetic COCO panoptic dataset")
    s.add_argument("--out", required=True)
    s.add_argument("--train", type=int, default=1000)
    s.add_argument("--val", type=int, default=200)
    s.add_argument("--size", type=int, default=128, help="image height (and width unless --width)")
    s.add_argument("--width", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--occlusion", choices=("normal", "heavy"), default="normal")
    s.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("perturb", help="write a perturbed copy of a ground truth as a prediction set")
    s.add_argument("--gt-json", required=True)
    s.add_argument("--gt-dir", default=None)
    s.add_argument("--out-json", required=True)
    s.add_argument("--out-dir", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--strength", type=float, default=1.0)
    s.set_defaults(func=cmd_perturb)

    s = sub.add_parser("evaluate", help="COCO panoptic quality (PQ/SQ/RQ) of a prediction set; or pixel accuracy, "
                                        "mIoU and the ADE score of label PNG folders")
    s.add_argument("--gt-json", default=None)
    s.add_argument("--gt-dir", default=None, help="default: --gt-json without .json")
    s.add_argument("--pred-json", default=None)
    s.add_argument("--pred-dir", default=None, help="default: --pred-json without .json")
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--out", default=None, help="results JSON (default: pq_results.json beside --pred-json)")
    s.add_argument("--strict", action="store_true",
                   help="refuse the oddities panopticapi tolerates (id-0 segments, repeated ids, ...) "
                        "instead of warning and evaluating them as panopticapi does")
    s.add_argument("--gt-labels", default=None, help="folder of ground-truth label PNGs (category id, 0 = ignore)")
    s.add_argument("--pred-labels", default=None, help="folder of predicted label PNGs, same file names "
                                                         "(panoptix predict writes them in OUTPUT/labels)")
    s.add_argument("--categories", default=None, help="label evaluation: categories JSON (default: ids 1..max)")
    s.add_argument("--miou-over", default=None, choices=("all", "present"),
                   help="label evaluation: average IoU over all classes of --categories, absent ones counting 0 "
                        "(the ADE20K benchmark; the default with --categories), or over the classes present "
                        "(the default without)")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("viz", help="draw panoptic overlays (GT | prediction when a prediction is given)")
    s.add_argument("--gt-json", required=True)
    s.add_argument("--gt-dir", default=None)
    s.add_argument("--images", default=None, help="folder of the RGB images")
    s.add_argument("--pred-json", default=None)
    s.add_argument("--pred-dir", default=None)
    s.add_argument("--out", required=True)
    s.add_argument("--labels", action="store_true", help="write category names on segments")
    s.add_argument("--limit", type=int, default=None)
    s.set_defaults(func=cmd_viz)

    s = sub.add_parser("train", help="train a system from a YAML config (torchrun for several processes)")
    s.add_argument("--config", required=True, help="YAML file, or the name of one in configs/")
    s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. solver.max_iter=100")
    _add_import(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("predict", help="panoptic predictions (COCO JSON + PNGs + overlays) for images")
    s.add_argument("--config", default=None, help="default: the config stored in --weights")
    s.add_argument("--weights", default=None, help="a checkpoint written by panoptix train")
    s.add_argument("--tta", default=None, metavar="'scales=0.75,1,1.25 flip'",
                   help="panoptic test-time augmentation (two-stage systems): scales are multiples of the test size")
    s.add_argument("--ensemble", default=None, metavar="a.pth:0.4,b.pth:1.2",
                   help="weighted checkpoints to ensemble (with --weights, that one joins with weight 1)")
    s.add_argument("--box-voting", action="store_true", help="TTA/ensemble: vote the merged boxes")
    s.add_argument("--two-level", default=None, metavar="FUSION.json",
                   help="predict with the two-level fusion of the ends fitted by panoptix fit-fusion")
    s.add_argument("--fusion", default=None, help="--two-level: the merge (default: the first end's)")
    s.add_argument("--input", required=True, help="an image or a folder of images")
    s.add_argument("--recursive", action="store_true", help="take the images of --input's sub-folders too")
    s.add_argument("--output", required=True)
    s.add_argument("--gt-json", default=None, help="take image ids from this COCO panoptic JSON (by file name)")
    s.add_argument("--batch-size", type=int, default=4)
    s.add_argument("--device", default="auto")
    s.add_argument("--no-overlays", action="store_true")
    s.add_argument("--strict", action="store_true",
                   help="exit non-zero when a file is skipped (unreadable, or not an image)")
    s.add_argument("overrides", nargs="*", help="key=value config overrides")
    _add_import(s)
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("pseudo-label", help="a scene parsing teacher's pseudo-labels for unlabelled images "
                                            "(low-confidence pixels ignored), written as a label folder")
    s.add_argument("--weights", required=True, help="the teacher checkpoint")
    s.add_argument("--images", required=True, help="an image or a folder of unlabelled images")
    s.add_argument("--recursive", action="store_true", help="take the images of --images' sub-folders too")
    s.add_argument("--out", required=True, help="label folder: images/SPLIT, annotations/SPLIT, categories.json")
    s.add_argument("--threshold", type=float, default=0.5, help="ignore pixels whose top probability is below it")
    s.add_argument("--tta", default=None, metavar="'scales=0.5,0.75,1,1.25,1.5,1.75,2 flip'",
                   help="the teacher's test-time augmentation (softmax averaged)")
    s.add_argument("--split", default="pseudo")
    s.add_argument("--device", default="auto")
    _add_import(s)
    s.set_defaults(func=cmd_pseudo_label)

    s = sub.add_parser("self-train", help="teacher-student rounds end to end (seed 003): teacher, pseudo-labels, "
                                          "student on mixed batches, optional fine-tune, N rounds")
    s.add_argument("--config", required=True, help="the system's config (its data.train is the labelled set)")
    s.add_argument("--images", required=True, help="folder of unlabelled images")
    s.add_argument("--out", required=True)
    s.add_argument("--rounds", type=int, default=2)
    s.add_argument("--threshold", type=float, default=0.5)
    s.add_argument("--tta", default=None, help="the teachers' test-time augmentation")
    s.add_argument("--finetune-iters", type=int, default=0, help="fine-tune each student on labelled data alone")
    s.add_argument("--teacher", default=None, help="start from this teacher checkpoint instead of training one")
    s.add_argument("--device", default="auto")
    s.add_argument("overrides", nargs="*", help="key=value config overrides (every stage)")
    _add_import(s)
    s.set_defaults(func=cmd_self_train)

    s = sub.add_parser("fit-fusion", help="two-level fusion of two trained ends (seed 001): per-class choice of "
                                          "the instance end on a held-out set, optional comparison on a test set")
    s.add_argument("--ends", nargs="+", required=True, metavar="CKPT", help="the ends' checkpoints (two or more)")
    s.add_argument("--fit-data", required=True, help="root of the held-out dataset the choice is fitted on")
    s.add_argument("--fit-split", default="val")
    s.add_argument("--test-data", default=None, help="root of a test dataset: PQ of each end and of the fusion")
    s.add_argument("--test-split", default="val")
    s.add_argument("--fusion", default=None, help="the merge of the fused outputs (default: the first end's)")
    s.add_argument("--limit", type=int, default=None, help="fit on the first N held-out images")
    s.add_argument("--out", default="runs/fusion/two_level.json")
    s.add_argument("--batch-size", type=int, default=4)
    s.add_argument("--device", default="auto")
    s.add_argument("overrides", nargs="*", help="key=value overrides applied to every end")
    _add_import(s)
    s.set_defaults(func=cmd_fit_fusion)

    s = sub.add_parser("ablate", help="compare merges (heuristic, ranking, upsnet, upsnet+crf) on one trained "
                                      "model, or train one model per merge (--train-variants)")
    s.add_argument("--weights", default=None, help="a checkpoint trained with the heads the merges need")
    s.add_argument("--config", default=None, help="default: the config stored in --weights")
    s.add_argument("--fusions", default="heuristic,ranking,upsnet,upsnet+crf",
                   help="comma-separated merges: a fusion name, optionally +crf or +crf:BACKEND (torch, densecrf)")
    s.add_argument("--crf-backend", default="torch", choices=("torch", "densecrf"),
                   help="the CRF backend of a bare +crf")
    s.add_argument("--data", default=None, help="root of a synthetic dataset (sets data.val.root and data.train.root)")
    s.add_argument("--out", default="runs/ablate")
    s.add_argument("--train-variants", action="store_true",
                   help="train one model per merge with --config (same recipe and seed), then evaluate each")
    s.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")
    s.add_argument("--batch-size", type=int, default=4)
    s.add_argument("--device", default="auto")
    s.add_argument("overrides", nargs="*", help="key=value config overrides")
    _add_import(s)
    s.set_defaults(func=cmd_ablate)

    s = sub.add_parser("export", help="export a trained CIAE system whole (network and merge) to ONNX")
    s.add_argument("--weights", required=True)
    s.add_argument("--config", default=None, help="default: the config stored in --weights")
    s.add_argument("--format", default="onnx", choices=("onnx",), help="the file format of --out (its suffix "
                                                                       "must match)")
    s.add_argument("--out", default="runs/export/model.onnx")
    s.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"),
                   help="the image size the graph takes (resize images to it before running the graph)")
    s.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison with PyTorch")
    s.add_argument("--repeat", type=int, default=10, help="timed runs of the check")
    s.add_argument("overrides", nargs="*", help="key=value config overrides")
    _add_import(s)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("demo", help="synthetic data -> train the tiny system -> predict -> PQ -> overlays")
    s.add_argument("--out", default="runs/demo")
    s.add_argument("--config", default="panoptic_fpn_tiny")
    s.add_argument("overrides", nargs="*", help="key=value overrides of the training config")
    s.add_argument("--train", type=int, default=1000)
    s.add_argument("--val", type=int, default=200)
    s.add_argument("--size", type=int, default=128)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overlays", type=int, default=16)
    _add_import(s)
    s.set_defaults(func=cmd_demo)
    return p


def _add_import(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first, so that the components it registers can be named in the "
                             "config (repeatable; also the config key imports: [...])")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (PanoptixError, FileNotFoundError) as err:
        print(f"panoptix {args.command}: error: {err}", file=sys.stderr)
        problems = getattr(err, "problems", [])
        _print_lines(args.command, "error", problems[1:])
        return 2


if __name__ == "__main__":
    sys.exit(main())
