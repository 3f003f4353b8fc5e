"""Layers point one way: every import in the package, at module level or inside a function, is
checked against the layer rules (a static walk of the source; nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "panoptix"
UPPER = ("panoptix.models", "panoptix.engine", "panoptix.cli", "panoptix.config")
# What each layer must not import. Ground modules sit below everything else.
GROUND = ("errors", "jsonio", "registry", "weights", "image_input", "structures")
FORBIDDEN = {
    **{f"panoptix.{m}": ("panoptix.data", "panoptix.evaluation", "panoptix.fusion", "panoptix.losses", "panoptix.viz",
                         *UPPER) for m in GROUND},
    "panoptix.data": UPPER, "panoptix.evaluation": UPPER, "panoptix.fusion": UPPER, "panoptix.losses": UPPER,
    "panoptix.viz": UPPER,
    "panoptix.models": ("panoptix.engine", "panoptix.cli", "panoptix.config"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import statement in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).split(".") if path.name == "__init__.py" else module_name(path).split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found += [(node.lineno, f"{base}.{alias.name}" if not node.module else base) for alias in node.names]
    return found


def _rule(module: str) -> tuple[str, ...]:
    for prefix in sorted(FORBIDDEN, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return FORBIDDEN[prefix]
    return ()


def upward_imports() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        banned = _rule(module)
        for line, target in imported_modules(path):
            if any(target == b or target.startswith(b + ".") for b in banned):
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} imports {target}")
    return problems


def test_no_layer_imports_upward():
    assert upward_imports() == []


def test_the_walk_sees_imports_inside_functions(tmp_path, monkeypatch):
    """The checker itself: a function-level upward import in a data module is reported."""
    fake = tmp_path / "panoptix"
    (fake / "data").mkdir(parents=True)
    (fake / "data" / "bad.py").write_text("def f():\n    from panoptix.engine.trainer import Trainer\n")
    (fake / "models").mkdir()
    (fake / "models" / "ok.py").write_text("from panoptix.data.meta import DatasetMeta\nfrom . import sibling\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert upward_imports() == ["panoptix/data/bad.py:2: panoptix.data.bad imports panoptix.engine.trainer"]
