"""``panoptix sweep``: variants of one config over seeds, evaluated on one held-out set, with paired
effects and their 95% intervals (`panoptix.engine.sweep`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from panoptix.cli.options import add_import, add_overrides, write_report
from panoptix.errors import PanoptixError

HELP = "train variants of a config over seeds and report each variant's effect with a 95%% interval"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="the base config (YAML file or bundled name)")
    p.add_argument("--variant", action="append", required=True, metavar="NAME[=[@CONFIG,]key=value,...]",
                   help="a variant: a name and its overrides (none: the base); @CONFIG first trains another config; "
                        "repeatable, the first is the reference of the paired differences; {seed} in a value "
                        "becomes the run's seed")
    p.add_argument("--eval-variant", action="append", default=[], metavar="NAME=key=value,...",
                   help="a variant evaluated on the first variant's trained runs, the overrides applied when "
                        "loading them (another merge, a refinement): compared on the same models; repeatable")
    p.add_argument("--eval-tta", action="append", default=[], metavar="NAME=SETTINGS",
                   help="an evaluation variant: the first variant's runs with test-time augmentation, as predict "
                        "--tta takes it (e.g. \"tta=scales=0.75,1,1.25 flip\"); repeatable")
    p.add_argument("--eval-ensemble", action="append", default=[], metavar="NAME=VARIANT:WEIGHT,...",
                   help="a weighted ensemble of trained variants' runs of each seed, as predict --ensemble runs "
                        "it (AntVisionPS's E-UPS end: \"eups_ens=r18:0.4,r34:1.2,eups:1.1,se:1.3\"); repeatable")
    p.add_argument("--eval-two-level", action="append", default=[], metavar="NAME=END,END",
                   help="AntVisionPS's two-level fusion of two ends (trained variants or --eval-ensemble names), "
                        "its per-class choice fitted per seed on --fit-data, as fit-fusion fits it; repeatable")
    p.add_argument("--baseline", default=None, metavar="NAME",
                   help="the variant the paired differences are taken against (default: the first --variant); "
                        "best:A,B,... takes, on each seed, whichever of those has the higher PQ (AntVisionPS's "
                        "\"better end\", \"best member\")")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated engine.seed values, the same for every variant")
    p.add_argument("--test-data", default=None, metavar="ROOT",
                   help="held-out set in COCO's layout (at least 1000 images for claims); default: each run's data.val")
    p.add_argument("--test-split", default="val", help="the split of --test-data")
    p.add_argument("--fit-data", default=None, metavar="ROOT",
                   help="held-out set (COCO layout) the two-level fusions are fitted on: not --test-data")
    p.add_argument("--fit-split", default="val", help="the split of --fit-data")
    p.add_argument("--accept-config-change", action="append", default=[], metavar="KEY",
                   help="a setting (dotted key) whose change since a run was trained leaves its weights as they "
                        "are, e.g. model.backbone.stem_width where timm ignored it; repeatable (an existing run "
                        "trained with other settings is otherwise refused)")
    p.add_argument("--jobs", type=int, default=1, help="trainings at once, the CPU threads split between them")
    p.add_argument("--out", required=True, help="folder of the runs (VARIANT/seed_S), sweep.json and sweep.md")
    p.add_argument("--device", default="auto", help="device of the evaluation: cpu, cuda, cuda:N or auto")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass in the evaluation")
    add_overrides(p, "key=value overrides of every run")
    add_import(p)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from panoptix.config import load_config
    from panoptix.engine.sweep import (
        Variant,
        baseline_names,
        check_references,
        markdown,
        plan_runs,
        summarise,
        train_command,
        train_overrides,
        train_runs,
    )
    from panoptix.engine.sweep_configs import check_existing_runs
    from panoptix.engine.sweep_eval import TestSet, score_variant

    variants = [Variant.parse(v) for v in args.variant]
    eval_variants = ([Variant.parse(v, kind="eval") for v in args.eval_variant]
                     + [Variant.parse_tta(v) for v in args.eval_tta]
                     + [Variant.parse_ensemble(v) for v in args.eval_ensemble]
                     + [Variant.parse_two_level(v) for v in args.eval_two_level])
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise PanoptixError(f"--seeds {args.seeds!r}: comma-separated integers") from None
    out = Path(args.out)
    runs = plan_runs(variants, seeds, out)
    check_references(variants, eval_variants, args.fit_data)
    known = {v.name for v in [*variants, *eval_variants]}
    unknown = [n for n in baseline_names(args.baseline) if n not in known] if args.baseline is not None else []
    if unknown:
        raise PanoptixError(f"--baseline {args.baseline!r}: {unknown[0]!r} is no --variant or --eval-* name")
    # every run's config, loaded once: checked before anything trains, and against what a run trained with
    planned = {r.folder: load_config(r.variant.config or args.config, train_overrides(r, args.overrides), args.imports)
               for r in runs}
    check_existing_runs(runs, lambda r: planned[r.folder], lambda saved: load_config(str(saved), [], args.imports),
                        args.accept_config_change)
    todo = [r for r in runs if not r.finished(planned[r.folder]["solver"]["max_iter"])]
    print(f"sweep: {len(variants)} variant(s) x {len(seeds)} seed(s) = {len(runs)} runs in {out}; "
          f"{len(runs) - len(todo)} finished, {len(todo)} to train with {args.jobs} job(s)")
    t0 = time.time()
    with tqdm(total=len(todo), desc="sweep", unit="run") as bar:
        train_runs(todo, [train_command(args.config, r, args.overrides, args.imports) for r in todo], args.jobs,
                   on_done=lambda _: bar.update())
    test = TestSet(args.test_data, args.test_split)
    fit = TestSet(args.fit_data, args.fit_split) if args.fit_data else None
    ensembles = {v.name: v for v in eval_variants if v.kind == "ensemble"}
    scores, sizes, keys = {}, set(), None
    for v, s in tqdm([(v, s) for v in [*variants, *eval_variants] for s in seeds], desc="evaluate", unit="run"):
        evaluation = score_variant(v, s, out, variants[0].name, ensembles, test, fit, args.device, args.batch_size)
        scores[(v.name, s)] = evaluation["headline"]
        sizes.add(evaluation["images"])
        keys = evaluation["keys"]
    report = summarise([*variants, *eval_variants], seeds, scores, args.baseline)
    report["evaluation_variants"] = [v.name for v in eval_variants]
    report["tta"] = {v.name: v.tta for v in eval_variants if v.tta}
    report["ensembles"] = {v.name: v.members for v in eval_variants if v.kind == "ensemble"}
    report["two_level"] = {v.name: {"ends": v.ends, "fit_data": f"{args.fit_data}:{args.fit_split}"}
                           for v in eval_variants if v.kind == "two_level"}
    report.update({"config": args.config, "configs": {v.name: v.config for v in variants if v.config},
                   "overrides": args.overrides, "test_data": args.test_data or "data.val",
                   "test_images": min(sizes), "seconds": round(time.time() - t0, 1), "table_keys": keys})
    write_report(out, "sweep", report, markdown(report, keys))
    return 0
