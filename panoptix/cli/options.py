"""What the commands share: the checkpoint options, ``--import``, capped message lines, and a
`Namespace` of one command's defaults (how ``demo`` calls the other commands' ``run``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from panoptix.errors import PanoptixError
from panoptix.jsonio import write_json

SHOWN_LINES = 20


def print_lines(command: str, kind: str, lines: Sequence[str], where: str = "") -> None:
    """One ``panoptix CMD: KIND: ...`` line per item on stderr, the first 20 of them."""
    for line in lines[:SHOWN_LINES]:
        print(f"panoptix {command}: {kind}: {line}", file=sys.stderr)
    if len(lines) > SHOWN_LINES:
        print(f"panoptix {command}: ... and {len(lines) - SHOWN_LINES} more {kind}s{where}", file=sys.stderr)


def add_import(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first, so that the components it registers can be named in the "
                             "config (repeatable; also the config key imports: [...])")


def add_overrides(parser: argparse.ArgumentParser, what: str = "key=value config overrides") -> None:
    parser.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help=f"{what}, e.g. solver.max_iter=100")


def add_model_options(parser: argparse.ArgumentParser, weights: Literal["required", "optional", "none"] = "required",
                      device: bool = True, batch_size: int = 0) -> None:
    """The options of a command that loads a trained model: ``--weights`` (unless ``"none"``),
    ``--config``, ``--device``, ``--batch-size`` (when its default ``batch_size`` > 0), ``--import``
    and trailing ``key=value`` overrides."""
    if weights != "none":
        parser.add_argument("--weights", required=weights == "required", default=None, metavar="CKPT",
                            help="a checkpoint written by panoptix train")
    parser.add_argument("--config", default=None, help="a YAML file or the name of a bundled config (default: the "
                                                        "config stored in the checkpoint)")
    if device:
        parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    if batch_size:
        parser.add_argument("--batch-size", type=int, default=batch_size, help="images per forward pass")
    add_overrides(parser)
    add_import(parser)


def add_data_option(parser: argparse.ArgumentParser) -> None:
    """``--data ROOT --split S``: a COCO-layout ground truth instead of ``--gt-json`` / ``--gt-dir``
    (and ``--images`` where the command has it)."""
    parser.add_argument("--data", default=None, metavar="ROOT",
                        help="a dataset in COCO's layout (ROOT/annotations/panoptic_SPLIT.json, its PNG folder, "
                             "ROOT/SPLIT/ images), instead of --gt-json and --gt-dir")
    parser.add_argument("--split", default=None, help="the split of --data (e.g. val2017)")


def resolve_data(args: argparse.Namespace) -> None:
    """Fill ``gt_json``, ``gt_dir`` (and ``images`` when the command has it) from ``--data``/``--split``;
    explicit path flags win. One line when a piece is missing."""
    if args.data is None:
        if args.split is not None:
            raise PanoptixError("--split goes with --data ROOT")
        return
    from panoptix.data.spec import DatasetSpec

    spec = DatasetSpec(format="coco", root=args.data, split=args.split, json=args.gt_json, png_dir=args.gt_dir,
                       image_dir=getattr(args, "images", None))
    args.gt_json, args.gt_dir, images = (str(p) if p else None for p in spec.coco_paths("--data"))
    if hasattr(args, "images"):
        args.images = images


def write_report(out: Path, stem: str, report: dict[str, Any], table: str) -> None:
    """``OUT/STEM.json`` (the report) and ``OUT/STEM.md`` (the table), the table printed and both named."""
    write_json(out / f"{stem}.json", report)
    (out / f"{stem}.md").write_text(table + "\n")
    print(table)
    print(f"results: {out / f'{stem}.json'}, {out / f'{stem}.md'}")


def namespace(command: ModuleType, **values: Any) -> argparse.Namespace:
    """``command``'s arguments as its parser would give them: its defaults, replaced by ``values``
    (option names with ``_`` for ``-``). An unknown name, or a required option left out, is a
    `TypeError` (a programming error, not a user's)."""
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    unknown = set(values) - set(actions)
    missing = [d for d, a in actions.items() if a.required and d not in values]
    if unknown or missing:
        raise TypeError(f"{command.__name__}: unknown {sorted(unknown)}, missing {missing}")
    return argparse.Namespace(**{d: values.get(d, a.default) for d, a in actions.items()})
