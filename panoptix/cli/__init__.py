"""The ``panoptix`` command. One module per command in this package, each with ``HELP``,
``add_arguments(parser)`` and ``run(args)``; ``run`` imports the heavy code it needs, so that
``panoptix --help`` and ``evaluate``, ``synth``, ``perturb`` and ``viz`` start without torch
(tests/test_cli.py checks it).

Every command shows progress on long work, ends with a readable summary and writes its
machine-readable results as JSON.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from panoptix.cli.options import print_lines
from panoptix.errors import PanoptixError

# command name -> its module in this package, in the order --help lists them
COMMANDS = {"synth": "synth", "perturb": "perturb", "evaluate": "evaluate", "viz": "viz", "train": "train",
            "predict": "predict", "pseudo-label": "pseudo_label", "self-train": "self_train",
            "fit-fusion": "fit_fusion", "ablate": "ablate", "sweep": "sweep", "export": "export", "config": "config",
            "demo": "demo"}


def command_module(name: str) -> ModuleType:
    return importlib.import_module(f"panoptix.cli.{COMMANDS[name]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="panoptix", description="Panoptic segmentation toolkit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = command_module(name)
        # help= is %-formatted by argparse, a description is printed as it is
        command = sub.add_parser(name, help=module.HELP, description=module.HELP.replace("%%", "%"))
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (PanoptixError, FileNotFoundError) as err:
        print(f"panoptix {args.command}: error: {err}", file=sys.stderr)
        print_lines(args.command, "error", getattr(err, "problems", [])[1:])
        return 2


__all__ = ["COMMANDS", "build_parser", "command_module", "main"]
