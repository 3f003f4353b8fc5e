"""What a merge needs from its system, declared on the merge function itself, so that the engine
and the CLI ask the merge instead of testing its name.

- ``head``: the system slot and default component whose outputs the merge reads (the ranking
  merges read ``ranking_head``'s per-instance scores, UPSNet's reads ``upsnet_head``'s logits);
- ``reads_logits``: the merge compares semantic logits on their own scale, not just their argmax
  (UPSNet's unknown channel), so averaged outputs must be mean logits (`panoptix.fusion.average`);
- ``single_model``: the merge needs one model's per-instance scores, which an ensemble or TTA
  does not have;
- ``graph``: the merge's fixed-shape form for an exported graph (`panoptix.fusion.graph_merge`),
  with ``graph_defaults``, keywords it adds to the configured ones (the ranking merges' order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def declare(head: tuple[str, str] | None = None, reads_logits: bool = False, single_model: bool = False,
            graph: Callable[..., Any] | None = None, graph_defaults: dict[str, Any] | None = None
            ) -> Callable[[F], F]:
    """Decorator recording a merge's needs (module docstring) on the function."""
    def mark(fn: F) -> F:
        fn.needs_head, fn.reads_logits, fn.single_model = head, reads_logits, single_model
        fn.graph, fn.graph_defaults = graph, dict(graph_defaults or {})
        return fn
    return mark


def _merge(fusion: Any) -> Any:
    return getattr(fusion, "func", fusion)   # a configured merge is a functools.partial


def needs_head(fusion: Any) -> tuple[str, str] | None:
    """(system slot, default component) of the head the merge reads, or None."""
    return getattr(_merge(fusion), "needs_head", None)


def reads_logits(fusion: Callable[..., Any] | None) -> bool:
    """Whether a merge compares semantic logits on their own scale (UPSNet's), not just their argmax."""
    return bool(getattr(_merge(fusion), "reads_logits", False))


def single_model(fusion: Any) -> bool:
    """Whether a merge needs one model's per-instance scores (no ensemble or TTA)."""
    return bool(getattr(_merge(fusion), "single_model", False))


def graph_merge(fusion: Any) -> tuple[Callable[..., Any] | None, dict[str, Any]]:
    """(the merge's fixed-shape form or None, its keywords: the defaults it declares, then the
    configured ones)."""
    fn = _merge(fusion)
    return getattr(fn, "graph", None), {**getattr(fn, "graph_defaults", {}), **getattr(fusion, "keywords", {})}


__all__ = ["declare", "graph_merge", "needs_head", "reads_logits", "single_model"]
