"""``panoptix sweep``: variants of one config trained over several seeds, each run evaluated on one
held-out set, and each variant's effect against the first reported as a paired difference with a
95% interval (Student's t over seeds).

An evaluation variant (``eval_variants``: another merge, a refinement, inference settings) reuses
the first variant's trained runs and changes only how they are loaded, so merges are compared on
the same models, as ``panoptix ablate`` compares them on one.

Runs live in ``OUT/VARIANT/seed_S``, each an ordinary training folder: a re-run skips the finished
ones (``model_final.pth`` and ``train_summary.json`` at ``max_iter``) and resumes the others from
their checkpoints, after checking that each existing run was trained with the settings it would be
trained with now (`sweep_configs`). ``jobs`` trainings run at once as separate processes, the CPU threads split
between them (two 1-thread runs gave about 25% more throughput than one 2-thread run on 2 cores).
"""

from __future__ import annotations

import json
import math
import re
import statistics
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from panoptix.errors import PanoptixError

# Student's t, two-sided 95%, by degrees of freedom (1-30); the normal 1.96 beyond
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


@dataclass
class Variant:
    """A named set of config overrides (none: the base config). ``kind`` says how it is scored:

    - ``train``: its own runs, one per seed, of the sweep's config or of ``config`` (``NAME=@CONFIG,...``);
    - ``eval``: the first variant's runs reloaded with ``overrides`` and test-time augmentation ``tta``
      (``predict --tta``'s settings);
    - ``ensemble``: the weighted ensemble of trained variants' runs of each seed (``members``);
    - ``two_level``: AntVisionPS's two-level fusion of two ``ends`` (trained variants or ensembles).
    """

    name: str
    overrides: list[str] = field(default_factory=list)
    tta: str | None = None
    config: str | None = None
    kind: str = "train"
    members: list[tuple[str, float]] = field(default_factory=list)
    ends: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str, kind: str = "train") -> Variant:
        """``NAME`` or ``NAME=[@CONFIG,]key=value[,key=value...]``; commas inside [...] or {...} stay in
        their value. ``@CONFIG`` (a training variant's first item) trains another config."""
        flag = "--variant" if kind == "train" else "--eval-variant"
        name, _, rest = text.partition("=")
        _check_name(name, f"{flag} {text!r}: start with a name of letters, digits, _ . + -")
        overrides = [o.strip() for o in _split_top_level(rest) if o.strip()]
        config = None
        if overrides and overrides[0].startswith("@") and kind == "train":
            config = overrides.pop(0)[1:]
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise PanoptixError(f"{flag} {name}: {bad[0]!r} is not key=value")
        return cls(name, overrides, config=config, kind=kind)

    @classmethod
    def parse_tta(cls, text: str) -> Variant:
        """``NAME=SETTINGS``: the base's runs evaluated with test-time augmentation ``SETTINGS``
        (``"scales=0.5,1,2 flip"``), checked here."""
        from panoptix.engine.ensemble import TTASettings

        name, _, settings = text.partition("=")
        message = f"--eval-tta {text!r}: NAME=SETTINGS, e.g. flip_scales='scales=0.75,1,1.25 flip'"
        if not settings.strip():
            raise PanoptixError(message)
        _check_name(name, message)
        TTASettings.parse(settings)
        return cls(name, [], settings.strip(), kind="eval")

    @classmethod
    def parse_ensemble(cls, text: str) -> Variant:
        """``NAME=A:0.4,B:1.2``: the ensemble of variants A and B's runs of each seed, weighted (1 when
        omitted), as ``predict --ensemble`` runs it."""
        from panoptix.engine.ensemble import EnsembleError, parse_ensemble

        name, _, rest = text.partition("=")
        message = f"--eval-ensemble {text!r}: NAME=VARIANT:WEIGHT,VARIANT:WEIGHT,..."
        _check_name(name, message)
        try:
            members = parse_ensemble(rest)
        except EnsembleError as err:
            raise PanoptixError(f"{message} ({err})") from None
        return cls(name, kind="ensemble", members=members)

    @classmethod
    def parse_two_level(cls, text: str) -> Variant:
        """``NAME=END,END``: two-level fusion of two ends, each a trained variant or an ensemble's name."""
        name, _, rest = text.partition("=")
        _check_name(name, f"--eval-two-level {text!r}: NAME=END,END")
        ends = [e.strip() for e in rest.split(",") if e.strip()]
        if len(ends) != 2:
            raise PanoptixError(f"--eval-two-level {name}: name two ends (trained variants or ensembles), "
                                f"got {len(ends)}")
        return cls(name, kind="two_level", ends=ends)


def _check_name(name: str, message: str) -> None:
    """A variant's name is letters, digits, _ . + - (it names a folder); `PanoptixError` ``message`` else."""
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise PanoptixError(message)


def _split_top_level(text: str) -> list[str]:
    """``text`` split at the commas outside brackets and braces (YAML flow values keep theirs)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]] if text else parts


def t_quantile(df: int) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` degrees of freedom."""
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.96


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def paired_effect(values: Sequence[float], base: Sequence[float]) -> dict[str, float]:
    """Mean of the per-seed differences ``values - base`` and its 95% interval (t over seeds; NaN
    with one seed)."""
    diffs = [v - b for v, b in zip(values, base)]
    mean, sd = mean_sd(diffs)
    half = t_quantile(len(diffs) - 1) * sd / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(diffs)}


@dataclass
class Run:
    variant: Variant
    seed: int
    folder: Path

    def finished(self, max_iter: int) -> bool:
        summary = self.folder / "train_summary.json"
        if not ((self.folder / "model_final.pth").is_file() and summary.is_file()):
            return False
        return json.loads(summary.read_text()).get("iterations") == max_iter


def plan_runs(variants: Sequence[Variant], seeds: Sequence[int], out: Path) -> list[Run]:
    return [Run(v, s, out / v.name / f"seed_{s}") for v in variants for s in seeds]


def seeded(overrides: Sequence[str], seed: int) -> list[str]:
    """``overrides`` with ``{seed}`` replaced by the run's seed: a per-seed input such as the pseudo-labels
    of that seed's teacher (``data.pseudo.root=runs/pseudo/seed_{seed}``)."""
    return [o.replace("{seed}", str(seed)) for o in overrides]


def train_overrides(run: Run, overrides: Sequence[str]) -> list[str]:
    """One run's overrides of its config: the sweep's, then the variant's, then seed and folder (later win)."""
    return [*seeded(overrides, run.seed), *seeded(run.variant.overrides, run.seed), f"engine.seed={run.seed}",
            f"engine.output_dir={run.folder}"]


def train_command(config: str, run: Run, overrides: Sequence[str], imports: Sequence[str]) -> list[str]:
    """The ``panoptix train`` process of one run; ``config`` unless the variant names its own."""
    return [sys.executable, "-m", "panoptix.cli", "train", "--config", run.variant.config or config,
            *[f"--import={m}" for m in imports], *train_overrides(run, overrides)]


def train_runs(runs: Sequence[Run], commands: Sequence[list[str]], jobs: int, on_done: Any = None) -> None:
    """Run the training processes, ``jobs`` at a time with the CPU threads split between them; each
    writes its console to ``RUN/sweep_train.log``. A failed run stops the sweep, naming its log."""
    from panoptix.engine.distributed import thread_share_env

    env = thread_share_env(jobs)

    def one(item: tuple[Run, list[str]]) -> Run:
        run, command = item
        run.folder.mkdir(parents=True, exist_ok=True)
        with open(run.folder / "sweep_train.log", "a") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        if code != 0:
            raise PanoptixError(f"run {run.variant.name} seed {run.seed} failed (exit {code}); see "
                                f"{run.folder / 'sweep_train.log'}")
        if on_done is not None:
            on_done(run)
        return run

    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        list(pool.map(one, zip(runs, commands)))


BEST_OF = "best:"


def baseline_names(base: str) -> list[str]:
    """The variants a ``--baseline`` names: one name, or ``best:a,b,...``."""
    if not base.startswith(BEST_OF):
        return [base]
    names = [n.strip() for n in base.removeprefix(BEST_OF).split(",") if n.strip()]
    if not names:
        raise PanoptixError(f"--baseline {base!r}: best: needs variant names, e.g. best:eups_ens,lwl")
    return names


def base_per_seed(base: str, seeds: Sequence[int], scores: dict[tuple[str, int], dict[str, float]],
                  key: str) -> dict[int, str]:
    """The variant each seed's runs are compared with: ``base``, or for ``best:a,b,...`` the one of
    those with the highest ``key`` (the headline, PQ or mIoU) on that seed, ties to the first named:
    AntVisionPS's "better end" and "best member" are per model, so per seed here."""
    names = baseline_names(base)
    return {s: max(names, key=lambda n: scores[(n, s)][key]) for s in seeds}  # max keeps the first of ties


def summarise(variants: Sequence[Variant], seeds: Sequence[int], scores: dict[tuple[str, int], dict[str, float]],
              base: str | None = None) -> dict[str, Any]:
    """Per variant: each key's mean and sd over seeds, and its paired effect against ``base`` (a
    variant's name, or ``best:a,b,...`` for the best of those on each seed; default the first variant)."""
    base = base or variants[0].name
    keys = list(next(iter(scores.values())))
    chosen = base_per_seed(base, seeds, scores, keys[0])
    rows = []
    for v in variants:
        row: dict[str, Any] = {"variant": v.name, "overrides": v.overrides, "per_seed": {}}
        for key in keys:
            values = [scores[(v.name, s)][key] for s in seeds]
            mean, sd = mean_sd(values)
            row[key] = {"mean": mean, "sd": sd, "values": values}
            if v.name != base:
                row[key]["effect"] = paired_effect(values, [scores[(chosen[s], s)][key] for s in seeds])
        rows.append(row)
    return {"base": base, "base_per_seed": {str(s): n for s, n in chosen.items()}, "seeds": list(seeds),
            "keys": keys, "rows": rows}


def _mean_cell(stat: dict[str, Any]) -> str:
    """``mean ± sd``, or the mean alone with one seed (no sd)."""
    return f"{stat['mean']:.1f}" + ("" if math.isnan(stat["sd"]) else f" ± {stat['sd']:.1f}")


def _effect_cell(effect: dict[str, float] | None) -> str:
    """``+d [low, high]``; ``+d`` with one seed (no interval); ``—`` for the base."""
    if not effect:
        return "—"
    if math.isnan(effect["low"]):
        return f"{effect['mean']:+.1f}"
    return f"{effect['mean']:+.1f} [{effect['low']:+.1f}, {effect['high']:+.1f}]"


def markdown(report: dict[str, Any], keys: Sequence[str] | None = None) -> str:
    """The table: mean ± sd per variant, and the paired difference to the base with its 95% interval."""
    keys = list(keys or report["keys"])
    n = len(report["seeds"])
    lines = ["| variant | " + " | ".join(keys) + " | " + " | ".join(f"Δ{k} vs {report['base']} (95% CI)" for k in keys)
             + " |", "|---|" + "---|" * (2 * len(keys))]
    for row in report["rows"]:
        cells = [_mean_cell(row[k]) for k in keys] + [_effect_cell(row[k].get("effect")) for k in keys]
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    lines += ["", f"{n} seeds ({', '.join(map(str, report['seeds']))}) on {report.get('test_images', '?')} images of "
                  f"{report.get('test_data', '?')}; "
                  + ("± is the sd over seeds; intervals are Student's t over the per-seed differences "
                     f"(df {n - 1})." if n > 1 else "one seed: no spread or interval (use 3 or more to compare).")]
    if report["base"].startswith(BEST_OF):
        lines.append(f"{report['base']} per seed: "
                     + ", ".join(f"seed {s} {name}" for s, name in report["base_per_seed"].items()))
    return "\n".join(lines)


def check_references(trained: Sequence[Variant], evaluated: Sequence[Variant], fit_data: str | None) -> None:
    """Every name is new; an ensemble's members are trained variants; a two-level fusion's ends are
    trained variants or ensembles, fitted on ``fit_data``. `PanoptixError` naming the first problem."""
    names = [v.name for v in [*trained, *evaluated]]
    if len(set(names)) != len(names):
        raise PanoptixError("--variant and --eval-* names must all differ")
    kinds = {v.name: v.kind for v in [*trained, *evaluated]}
    for v in evaluated:
        for member, _ in v.members:
            if kinds.get(member) != "train":
                raise PanoptixError(f"--eval-ensemble {v.name}: {member!r} is not a --variant")
        for end in v.ends:
            if kinds.get(end) not in ("train", "ensemble"):
                raise PanoptixError(f"--eval-two-level {v.name}: {end!r} is neither a --variant nor an --eval-ensemble")
        if v.kind == "two_level" and not fit_data:
            raise PanoptixError(f"--eval-two-level {v.name}: pass --fit-data, a held-out set other than --test-data "
                                f"that the per-class choice is fitted on")
