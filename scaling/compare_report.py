"""What ``scaling compare`` makes of a comparison: the results object and its presentation.

:class:`CompareResult` (the rows :class:`SizeOptimum`, :class:`Slope`, :class:`Holdout`,
:class:`Verdict`) is what :func:`scaling.compare.compare` returns; its ``table()`` is the text the
command prints and ``to_json()`` the record (compare.json). :func:`plot_lr_star` and
:func:`plot_regret` draw the two figures from a result (they never compute a figure), and
:func:`write_result` writes the three files. The computation is :mod:`scaling.compare`'s.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mm1model import records
from scaling.intervals import UNDEFINED_LIMIT, Interval, format_number
from scaling.plots import pyplot, write_figure

# The hold-out methods, in the order printed: MM1's road and the parametrization's.
METHODS = ("fitted law", "base LR reused")
# What each metric of scaling.compare.METRICS is, for the table.
METRIC_NAMES = {"overall": "final validation loss", "text": "final validation loss on the text-only source"}


@dataclasses.dataclass
class SizeOptimum:
    label: str
    family: str
    size: str
    x: float
    lr_star: float
    best_loss: float
    seed_spread: float
    curve: list[tuple[float, float]]  # (lr, mean loss; inf when no ok seed)
    note: str | None = None  # why the selection fell back to the best grid point
    n_seeds: int = 1
    lr_star_ci95: tuple[float, float] = (math.nan, math.nan)
    best_loss_ci95: tuple[float, float] = (math.nan, math.nan)


@dataclasses.dataclass
class Slope:
    label: str
    family: str
    slope: float
    ci95: tuple[float, float]  # statsmodels' OLS interval over the sizes' lr*
    n_sizes: int
    bootstrap95: tuple[float, float] = (math.nan, math.nan)  # over seeds


@dataclasses.dataclass
class Holdout:
    label: str
    family: str
    size: str
    method: str
    predicted_lr: float
    lr_star: float
    error_octaves: float
    regret: float
    seed_spread: float
    octaves_ci95: tuple[float, float] = (math.nan, math.nan)
    regret_ci95: tuple[float, float] = (math.nan, math.nan)

    @property
    def within_spread(self) -> bool | None:
        """Regret no larger than the seed spread (None when either is unknown)."""
        if math.isnan(self.regret) or math.isnan(self.seed_spread):
            return None
        return self.regret <= self.seed_spread


@dataclasses.dataclass
class Verdict:
    """One figure's paired difference between two roads of a family: ``label``'s (its base LR
    reused) minus sp's (its fitted law); lower is better for every figure. ``n_seeds``: seeds per
    size the interval rests on; ``seeds_needed``: seeds per size that would settle an unsettled
    difference of this size and spread (None when it cannot be estimated)."""

    family: str
    label: str
    figure: str
    difference: Interval
    n_seeds: int
    seeds_needed: int | None

    @property
    def winner(self) -> str | None:
        """The label whose road is lower, where the interval excludes zero; else None."""
        if not self.difference.excludes_zero:
            return None
        return self.label if self.difference.value < 0 else "sp"

    @property
    def text(self) -> str:
        if self.winner is not None:
            return f"{self.winner} lower"
        if self.difference.undefined > UNDEFINED_LIMIT:
            return f"no verdict: undefined in {self.difference.undefined:.0%} of draws"
        if self.difference.degenerate:
            return (f"no verdict: the interval ends at the difference itself ({self.n_seeds} seeds per size give "
                    "too few distinct resamples)")
        if self.seeds_needed is None:
            return "no verdict at this budget (over 1000 seeds per size: the difference is small against its spread)"
        return f"no verdict at this budget (~{self.seeds_needed} seeds per size would settle it)"


@dataclasses.dataclass
class CompareResult:
    """Everything ``scaling compare`` reports; ``table()`` is the text, ``to_json()`` the record
    (compare.json), ``files`` what :func:`scaling.compare.run_compare` wrote (not part of the record)."""

    optima: list[SizeOptimum]
    slopes: list[Slope]
    holdouts: list[Holdout]
    penalties: list[dict[str, Any]]
    verdicts: list[Verdict] = dataclasses.field(default_factory=list)
    metric: str = "overall"
    seeds: list[int] = dataclasses.field(default_factory=list)  # the seeds used
    bootstrap: int = 0
    files: list[Path] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """What the command prints: :meth:`table`, then the files written."""
        written = [f"wrote {', '.join(map(str, self.files))}"] if self.files else []
        return "\n".join([self.table(), *written])

    def table(self) -> str:
        boot = f"; [95% interval over seeds, {self.bootstrap} draws]" if self.bootstrap else ""
        lines = [f"metric {self.metric} ({METRIC_NAMES[self.metric]}), seeds {seeds_text(self.seeds)}{boot}", "",
                 "slope of ln lr* vs ln x (x = d_model for width, n_layers for depth, N for mm1)",
                 f"{'parametrization':<16} {'family':<6} {'sizes':>5} {'slope':>7} {'OLS 95% CI':>17} "
                 f"{'seeds 95%':>17}"]
        for s in self.slopes:
            lines.append(f"{s.label:<16} {s.family:<6} {s.n_sizes:>5} {s.slope:>+7.3f} {_ci(s.ci95, '+.2f'):>17} "
                         f"{_ci(s.bootstrap95, '+.2f'):>17}")
        lines += ["", "hold-out of the largest size (regret in nats, read off its own loss curve)",
                  f"{'parametrization':<16} {'family':<6} {'size':<6} {'method':<15} {'pred lr':>9} "
                  f"{'lr*':>9} {'octaves':>8} {'seeds 95%':>16} {'regret':>8} {'seeds 95%':>16} {'seed sd':>8}"]
        for h in self.holdouts:
            lines.append(f"{h.label:<16} {h.family:<6} {h.size:<6} {h.method:<15} {_e(h.predicted_lr):>9} "
                         f"{_e(h.lr_star):>9} {format_number(h.error_octaves, '+.2f'):>8} {_ci(h.octaves_ci95, '+.2f'):>16} "
                         f"{format_number(h.regret, '.4f'):>8} {_ci(h.regret_ci95, '.3f'):>16} {format_number(h.seed_spread, '.4f'):>8}")
        lines += ["", "asymptotic penalty at the largest size (best loss minus the best of all)",
                  f"{'parametrization':<16} {'family':<6} {'size':<6} {'best loss':>9} {'seeds 95%':>16} "
                  f"{'penalty':>8}"]
        for p in self.penalties:
            lines.append(f"{p['label']:<16} {p['family']:<6} {p['size']:<6} {p['best_loss']:>9.4f} "
                         f"{_ci(p['best_loss_ci95'], '.3f'):>16} {p['penalty']:>8.4f}")
        if self.verdicts:
            lines += ["", "verdicts: the parametrization's road (base LR reused) minus SP's (fitted law), "
                          "paired over seeds; lower is better",
                      f"{'family':<6} {'road':<16} {'figure':<21} {'difference [95%]':>27}  verdict"]
            for v in self.verdicts:
                lines.append(f"{v.family:<6} {v.label:<16} {v.figure:<21} {v.difference.text('+.3f'):>27}  {v.text}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return json_safe({"metric": self.metric, "seeds": self.seeds, "bootstrap": self.bootstrap,
                       "optima": [dataclasses.asdict(o) for o in self.optima],
                       "slopes": [dataclasses.asdict(s) for s in self.slopes],
                       "holdouts": [{**dataclasses.asdict(h), "within_spread": h.within_spread}
                                    for h in self.holdouts],
                       "penalties": self.penalties,
                       "verdicts": [{**dataclasses.asdict(v), "winner": v.winner, "text": v.text}
                                    for v in self.verdicts]})


def json_safe(value):
    """``value`` with every non-finite float as None (JSON has no NaN), through lists and dicts."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return value


def _e(v: float) -> str:
    return "-" if not math.isfinite(v) else f"{v:.2e}"


def _ci(ci: tuple[float, float], spec: str) -> str:
    return "-" if math.isnan(ci[0]) else f"[{format_number(ci[0], spec)}, {format_number(ci[1], spec)}]"


def seeds_text(seeds: Sequence[int]) -> str:
    """``0,1,2``: seeds as the command takes and prints them."""
    return ",".join(map(str, seeds))


# ------------------------------------------------------------------------------------ figures
def plot_lr_star(result: CompareResult, path: str | Path) -> None:
    """lr* against size (log-log), one panel per family, one line per parametrization, with the
    interval over seeds as error bars where there is one."""
    plt = pyplot()
    families = sorted({o.family for o in result.optima})
    fig, axes = plt.subplots(1, len(families), figsize=(4.8 * len(families), 3.8), squeeze=False)
    for ax, family in zip(axes[0], families):
        for label in sorted({o.label for o in result.optima if o.family == family}):
            pts = [o for o in result.optima if o.family == family and o.label == label]
            slope = next((s.slope for s in result.slopes if s.family == family and s.label == label), math.nan)
            ys = np.array([o.lr_star for o in pts])
            lo = np.array([o.lr_star_ci95[0] for o in pts])
            hi = np.array([o.lr_star_ci95[1] for o in pts])
            err = None if np.isnan(lo).all() else np.abs(np.vstack([ys - np.nan_to_num(lo, nan=ys),
                                                                    np.nan_to_num(hi, nan=ys) - ys]))
            ax.errorbar([o.x for o in pts], ys, yerr=err, marker="o", capsize=3, label=f"{label} (slope {slope:+.2f})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel({"width": "d_model", "depth": "n_layers"}.get(family, "N"))
        ax.set_ylabel("optimal peak LR")
        ax.set_title(f"{family} family ({result.metric} loss, seeds {seeds_text(result.seeds)})", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    write_figure(fig, path, dpi=120)
    plt.close(fig)


def plot_regret(result: CompareResult, path: str | Path) -> None:
    """Regret at the held-out size per (parametrization, method), with its interval over seeds
    and the seed spread."""
    plt = pyplot()
    rows = [h for h in result.holdouts if math.isfinite(h.regret)]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rows) + 2), 3.8))
    names = [f"{h.label}\n{h.family}\n{h.method}" for h in rows]
    values = np.array([h.regret for h in rows])
    lo = np.array([h.regret_ci95[0] for h in rows])
    hi = np.array([h.regret_ci95[1] for h in rows])
    err = None
    if rows and np.isfinite(lo).any():
        err = np.abs(np.vstack([values - np.where(np.isfinite(lo), lo, values),
                                np.where(np.isfinite(hi), hi, values) - values]))
    ax.bar(range(len(rows)), values, yerr=err, capsize=3,
           color=["C0" if h.method == METHODS[0] else "C1" for h in rows])
    spreads = [h.seed_spread for h in rows]
    if rows and any(math.isfinite(s) for s in spreads):
        ax.scatter(range(len(rows)), spreads, marker="_", s=400, color="k", label="seed spread")
        ax.legend(fontsize=7)
    ax.set_xticks(range(len(rows)), names, fontsize=6)
    ax.set_ylabel("regret (nats)")
    ax.set_title(f"held-out largest size: fitted law vs base LR reused ({result.metric} loss)", fontsize=9)
    fig.tight_layout()
    write_figure(fig, path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------ the files
def write_result(result: CompareResult, out: str | Path) -> CompareResult:
    """compare.json, lr_star.png and regret.png of ``result`` in ``out``; the result with its
    ``files``."""
    out = Path(out)
    records.write_json(out / "compare.json", result.to_json())
    plot_lr_star(result, out / "lr_star.png")
    plot_regret(result, out / "regret.png")
    return dataclasses.replace(result, files=[out / "compare.json", out / "lr_star.png", out / "regret.png"])
