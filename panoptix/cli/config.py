"""``panoptix config``: ``list`` the bundled configs and the registered components; ``show`` a config
fully resolved (``_base_`` merged, overrides applied, every default filled in)."""

from __future__ import annotations

import argparse

from panoptix.cli.options import add_import, add_overrides
from panoptix.errors import PanoptixError

HELP = "list the bundled configs and registered components, or show a config fully resolved"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("list", "show"), help="list: bundled configs and components; show: one config")
    p.add_argument("name", nargs="?", default=None, help="show: a YAML file or the name of a bundled config")
    add_overrides(p, "show: key=value overrides")
    add_import(p)


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        print(listing(args.imports))
        return 0
    if not args.name:
        raise PanoptixError("config show: name a config (panoptix config list shows the bundled ones)")
    import yaml

    from panoptix.config import load_config

    print(yaml.safe_dump(_plain(load_config(args.name, args.overrides, args.imports)), sort_keys=False,
                         default_flow_style=None), end="")
    return 0


def listing(imports: list[str]) -> str:
    """The bundled configs, one line each (the first line of the file's leading comment), then each
    registry's members."""
    from panoptix.config import bundled_configs
    from panoptix.registry import INTERFACES, import_modules

    import_modules(imports)
    configs = bundled_configs()
    width = max(len(name) - 5 for name in configs)
    lines = ["bundled configs (--config NAME; a file of yours may start from one with _base_: NAME):"]
    lines += [f"  {name[:-5]:{width}s}  {_summary(path.read_text())}" for name, path in configs.items()]
    lines += ["", "registered components (name them in a config section's name: key):"]
    lines += [f"  {registry.kind + 's':24s} {', '.join(registry.names())}" for registry in INTERFACES]
    return "\n".join(lines)


def _summary(text: str) -> str:
    """The first sentence-line of a YAML file's leading comment."""
    for line in text.splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").rstrip()
        if line.strip():
            break
    return ""


def _plain(value):
    """Tuples as lists, so that YAML prints plain sequences."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
