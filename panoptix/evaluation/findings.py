"""What the evaluator found wrong with its inputs: errors, and warnings about oddities that
panopticapi tolerates (evaluated as panopticapi evaluates them, or errors under ``strict``).

Every check reports itself: the evaluator runs all of them over every image and raises one
`PanopticInputError` listing each problem, so no check hides another.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from panoptix.data.errors import PanopticFormatError

Severity = Literal["error", "warning"]


def shown(items: Sequence[Any], limit: int = 10, sep: str | None = None) -> str:
    """The first ``limit`` items (as a list, or joined by ``sep``), then "and N more"."""
    items = list(items)
    head = sep.join(map(str, items[:limit])) if sep is not None else f"{items[:limit]}"
    return head + (f" and {len(items) - limit} more" if len(items) > limit else "")


@dataclass(frozen=True)
class Finding:
    """One problem: ``where`` names the file (and image), ``what`` the problem (and segment)."""

    severity: Severity
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


class PanopticInputError(PanopticFormatError):
    """All the problems found in a ground truth / prediction pair; the message is the first one.

    ``problems`` lists every problem as one line naming its file (and segment).
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        more = f" (+{len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        super().__init__(problems[0] + more)


def raise_on_errors(findings: Iterable[Finding], strict: bool) -> list[str]:
    """Raise `PanopticInputError` if any finding is an error (any at all when ``strict``);
    otherwise return the warnings as lines."""
    findings = list(findings)
    errors = [str(f) for f in findings if strict or f.severity == "error"]
    if errors:
        raise PanopticInputError(errors)
    return [str(f) for f in findings]
