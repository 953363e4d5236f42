"""Two roads to a large model's LR, judged on the same sweeps: the fitted law (MM1) against a
parametrization that makes the optimum stop moving (muP over width, CompleteP over depth).

Input: sweep directories (``scaling sweep``), each run under one parametrization (read from
each cell's ``train.model``: ``parametrization``, ``base_size``, ``alpha``; absent = sp). Runs
are grouped by *label* (``sp``, ``mup``, ``completep``, or ``completep_a0.5`` for another alpha)
and by *family* of their size (``width``: x = d_model; ``depth``: x = n_layers; ``mm1``: x = N).

Per (label, family):

* **optima**: the loss curve of each size (mean final validation loss over ok seeds per LR;
  a diverged or failed run counts as +inf), its lr* (by default the vertex of the parabola
  through the best grid point and its neighbours in log LR, as `scaling fit` selects it, so a
  factor-2 grid does not round every optimum to a whole octave), best loss and seed spread (std
  over seeds of the loss at the best grid point; NaN with one seed).
* **slope** of ln lr* against ln x with a 95% CI (statsmodels OLS): transfer works when it is
  near 0 (the note's bar: |slope| < 0.15).
* **hold-out of the largest size**: the law fitted on the other sizes (ln lr* = a + b ln x,
  the MM1 road) and the base size's lr* reused (the muP road), each scored by its error in
  octaves (log2 predicted / actual lr*) and its regret: the loss at the predicted LR, linearly
  interpolated in log2 LR on the held-out size's own loss curve, minus its best loss, set
  against the seed spread. A prediction outside the swept LRs has no regret (NaN).
* **asymptotic penalty** at the largest size of a family: each label's best loss minus the best
  of all labels.

The steps are `scaling fit`'s own: runs read by :func:`scaling.runs.collect_runs`, labelled by
:class:`scaling.runs.Parametrization` (``label`` is its ``kind``), checked by
:func:`scaling.runs.single_parametrization`; loss curves, seed means and lr* by
:func:`scaling.optima.select_optima`; slopes and the hold-out law by :func:`scaling.fit.fit_line`.
:func:`compare` returns a :class:`CompareResult`; :func:`run_compare` (the command) also writes
compare.json and the two figures.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mm1model import records
from mm1model.config import ConfigError, replace
from mm1model.parametrization import parametrize
from mm1model.sizes import family_of, get_size
from scaling.fit import clean_runs, fit_line
from scaling.optima import select_optima
from scaling.plots import pyplot, write_figure
from scaling.runs import Parametrization, collect_runs, single_parametrization

METHODS = ("fitted law", "base LR reused")
SELECTS = ("parabola", "argmin")


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


@dataclasses.dataclass
class Slope:
    label: str
    family: str
    slope: float
    ci95: tuple[float, float]
    n_sizes: int


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

    @property
    def within_spread(self) -> bool | None:
        """Regret no larger than the seed spread (None when either is unknown)."""
        if math.isnan(self.regret) or math.isnan(self.seed_spread):
            return None
        return self.regret <= self.seed_spread


@dataclasses.dataclass
class CompareResult:
    """Everything ``scaling compare`` reports; ``table()`` is the text, ``to_json()`` the record
    (compare.json), ``files`` what :func:`run_compare` wrote (not part of the record)."""

    optima: list[SizeOptimum]
    slopes: list[Slope]
    holdouts: list[Holdout]
    penalties: list[dict[str, Any]]
    files: list[Path] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """What the command prints: :meth:`table`, then the files written."""
        written = [f"wrote {', '.join(map(str, self.files))}"] if self.files else []
        return "\n".join([self.table(), *written])

    def table(self) -> str:
        lines = ["slope of ln lr* vs ln x (x = d_model for width, n_layers for depth, N for mm1)",
                 f"{'parametrization':<16} {'family':<6} {'sizes':>5} {'slope':>7} {'95% CI':>17}"]
        for s in self.slopes:
            ci = "-" if math.isnan(s.ci95[0]) else f"[{s.ci95[0]:+.2f}, {s.ci95[1]:+.2f}]"
            lines.append(f"{s.label:<16} {s.family:<6} {s.n_sizes:>5} {s.slope:>+7.3f} {ci:>17}")
        lines += ["", "hold-out of the largest size (regret in nats, read off its own loss curve)",
                  f"{'parametrization':<16} {'family':<6} {'size':<6} {'method':<15} {'pred lr':>9} "
                  f"{'lr*':>9} {'octaves':>8} {'regret':>8} {'seed sd':>8}"]
        for h in self.holdouts:
            lines.append(f"{h.label:<16} {h.family:<6} {h.size:<6} {h.method:<15} {_e(h.predicted_lr):>9} "
                         f"{_e(h.lr_star):>9} {_f(h.error_octaves, '+.2f'):>8} {_f(h.regret, '.4f'):>8} "
                         f"{_f(h.seed_spread, '.4f'):>8}")
        lines += ["", "asymptotic penalty at the largest size (best loss minus the best of all)",
                  f"{'parametrization':<16} {'family':<6} {'size':<6} {'best loss':>9} {'penalty':>8}"]
        for p in self.penalties:
            lines.append(f"{p['label']:<16} {p['family']:<6} {p['size']:<6} {p['best_loss']:>9.4f} "
                         f"{p['penalty']:>8.4f}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        def clean(value):
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return value

        return clean({"optima": [dataclasses.asdict(o) for o in self.optima],
                      "slopes": [dataclasses.asdict(s) for s in self.slopes],
                      "holdouts": [{**dataclasses.asdict(h), "within_spread": h.within_spread} for h in self.holdouts],
                      "penalties": self.penalties})


def _e(v: float) -> str:
    return "-" if not math.isfinite(v) else f"{v:.2e}"


def _f(v: float, spec: str) -> str:
    return "-" if not math.isfinite(v) else format(v, spec)


def load_runs(sweep_dirs: list[str | Path]) -> pd.DataFrame:
    """The runs tables of the sweeps (``scaling.runs.collect_runs``), concatenated, with the
    columns ``base_size, alpha, label`` (the :attr:`~scaling.runs.Parametrization.kind`),
    ``family, x`` and ``fixed`` (what the family holds constant: n_layers for width, d_model for
    depth) added from each cell."""
    if not sweep_dirs:
        raise ConfigError("give at least one sweep directory")
    frames = []
    for sweep_dir in sweep_dirs:
        frame = collect_runs(sweep_dir)
        extra = []
        for path, size in zip(frame["path"], frame["size"]):
            model = records.read_json(Path(path) / "cell.json")["train"].get("model") or {}
            par = Parametrization.of(model)
            # Building the config validates the cell (a base larger than the size, an unknown
            # parametrization) with the model's own one-line errors.
            cfg = parametrize(replace(get_size(size), parametrization=par.name, base_size=par.base_size, alpha=par.alpha))
            family = family_of(size)
            x = {"width": cfg.lm.d_model, "depth": cfg.lm.n_layers}.get(family)
            # what a family holds fixed: a width family's depth, a depth family's width
            fixed = {"width": cfg.lm.n_layers, "depth": cfg.lm.d_model}.get(family)
            extra.append({"base_size": par.base_size, "alpha": par.alpha, "label": par.kind, "family": family,
                          "x": x, "fixed": fixed})
        frames.append(pd.concat([frame, pd.DataFrame(extra, index=frame.index)], axis=1))
    runs = pd.concat(frames, ignore_index=True)
    runs.loc[runs["family"] == "mm1", "x"] = runs.loc[runs["family"] == "mm1", "params"]
    return runs


def _optima(label: str, family: str, runs: pd.DataFrame, select: str) -> dict[str, SizeOptimum]:
    """Per size of one (label, family) group, its optimum as `scaling fit` selects it (seed means
    per LR, a diverged seed making its LR diverged); sizes whose every run diverged are absent."""
    cleaned = clean_runs(runs)
    optima, _, _ = select_optima(cleaned, select)
    out = {}
    for opt in optima:
        size_runs = cleaned[cleaned["size"] == opt["size"]]
        at_best = size_runs[np.isclose(size_runs["lr"], opt["lr_best"], rtol=1e-9, atol=0.0)
                            & np.isfinite(size_runs["loss"])]["loss"]
        out[opt["size"]] = SizeOptimum(
            label=label, family=family, size=opt["size"], x=float(size_runs["x"].iloc[0]), lr_star=opt["lr_opt"],
            best_loss=opt["loss_best"], seed_spread=float(at_best.std(ddof=1)) if len(at_best) > 1 else math.nan,
            curve=[(p["lr"], p["loss"]) for p in opt["points"]], note=opt["fallback"])
    return out


def _regret(opt: SizeOptimum, lr: float) -> float:
    return regret_at(opt.curve, opt.best_loss, lr)


def regret_at(curve: list[tuple[float, float]], best_loss: float, lr: float) -> float:
    """The loss at ``lr`` on a swept curve of (lr, mean loss) points, linearly interpolated in
    log2 LR, minus ``best_loss``: NaN outside the swept LRs, +inf across a diverged point."""
    finite = [(math.log2(a), b) for a, b in curve if math.isfinite(b)]
    xs = [p[0] for p in finite]
    if len(finite) < 2 or not (min(xs) - 1e-9 <= math.log2(lr) <= max(xs) + 1e-9):
        return math.nan
    # A diverged LR inside the grid has no loss: regret across it is unknown, not small.
    inside = [(math.log2(a), b) for a, b in curve if min(xs) <= math.log2(a) <= max(xs)]
    lo = max((p for p in inside if p[0] <= math.log2(lr)), key=lambda p: p[0])
    hi = min((p for p in inside if p[0] >= math.log2(lr)), key=lambda p: p[0])
    if not (math.isfinite(lo[1]) and math.isfinite(hi[1])):
        return math.inf
    value = float(np.interp(math.log2(lr), [lo[0], hi[0]], [lo[1], hi[1]])) if hi[0] > lo[0] else lo[1]
    return value - best_loss


def compare(sweep_dirs: list[str | Path], select: str = "parabola") -> CompareResult:
    """Compare the parametrizations in ``sweep_dirs`` (see the module docstring). ``select``:
    how lr* is read off each loss curve, ``parabola`` or ``argmin`` (the best grid point)."""
    if select not in SELECTS:
        raise ConfigError(f"unknown select {select!r}; valid: {', '.join(SELECTS)}")
    runs = load_runs(sweep_dirs)
    optima, slopes, holdouts, penalties = [], [], [], []
    largest_best: dict[str, list[tuple[str, str, float]]] = {}
    for (label, family), group in runs.groupby(["label", "family"], sort=True):
        single_parametrization(group)
        fixed = sorted({int(v) for v in group["fixed"].dropna()})
        if len(fixed) > 1:
            held = {"width": "depths", "depth": "widths"}[family]
            raise ConfigError(f"the {label} runs of the {family} family mix {held} {', '.join(map(str, fixed))} "
                              "(e.g. the CPU and GPU families): compare one family at a time")
        order = group.groupby("size")["x"].first().sort_values()
        by_size = _optima(label, family, group, select)
        held_out = order.index[-1]
        if held_out not in by_size:
            n = int((group["size"] == held_out).sum())
            raise ConfigError(f"held-out size {held_out} ({label}, {family} family) has no loss curve: "
                              f"{n} settled run(s), none ok")
        found = [by_size[size] for size in order.index if size in by_size]
        optima += found
        if len(found) >= 2:
            line = fit_line(np.log([o.x for o in found]), np.log([o.lr_star for o in found]))
            slopes.append(Slope(label, family, line.slope, line.slope_ci95, len(found)))
        target, others = found[-1], found[:-1]
        base_name = next((b for b in group["base_size"] if isinstance(b, str)), None)
        base = next((o for o in others if o.size == base_name), others[0] if others else None)
        predictions = {}
        if len(others) >= 2:
            law = fit_line(np.log([o.x for o in others]), np.log([o.lr_star for o in others]))
            predictions["fitted law"] = float(math.exp(law.at(math.log(target.x))))
        if base is not None:
            predictions["base LR reused"] = base.lr_star
        for method, lr in predictions.items():
            holdouts.append(Holdout(label, family, target.size, method, lr, target.lr_star,
                                    math.log2(lr / target.lr_star), _regret(target, lr), target.seed_spread))
        largest_best.setdefault(family, []).append((label, target.size, target.best_loss))
    for family, rows in largest_best.items():
        best = min(r[2] for r in rows)
        penalties += [{"label": label, "family": family, "size": size, "best_loss": loss, "penalty": loss - best}
                      for label, size, loss in rows]
    return CompareResult(optima, slopes, holdouts, penalties)


# ------------------------------------------------------------------------------------ figures
def plot_lr_star(result: CompareResult, path: str | Path) -> None:
    """lr* against size (log-log), one panel per family, one line per parametrization."""
    plt = pyplot()
    families = sorted({o.family for o in result.optima})
    fig, axes = plt.subplots(1, len(families), figsize=(4.8 * len(families), 3.8), squeeze=False)
    for ax, family in zip(axes[0], families):
        for label in sorted({o.label for o in result.optima if o.family == family}):
            pts = [o for o in result.optima if o.family == family and o.label == label]
            slope = next((s.slope for s in result.slopes if s.family == family and s.label == label), math.nan)
            ax.plot([o.x for o in pts], [o.lr_star for o in pts], marker="o", label=f"{label} (slope {slope:+.2f})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel({"width": "d_model", "depth": "n_layers"}.get(family, "N"))
        ax.set_ylabel("optimal peak LR")
        ax.set_title(f"{family} family")
        ax.legend(fontsize=7)
    fig.tight_layout()
    write_figure(fig, path, dpi=120)
    plt.close(fig)


def plot_regret(result: CompareResult, path: str | Path) -> None:
    """Regret at the held-out size per (parametrization, method), with the seed spread."""
    plt = pyplot()
    rows = [h for h in result.holdouts if math.isfinite(h.regret)]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rows) + 2), 3.8))
    names = [f"{h.label}\n{h.family}\n{h.method}" for h in rows]
    ax.bar(range(len(rows)), [h.regret for h in rows], color=["C0" if h.method == METHODS[0] else "C1" for h in rows])
    spreads = [h.seed_spread for h in rows]
    if rows and any(math.isfinite(s) for s in spreads):
        ax.scatter(range(len(rows)), spreads, marker="_", s=400, color="k", label="seed spread")
        ax.legend(fontsize=7)
    ax.set_xticks(range(len(rows)), names, fontsize=6)
    ax.set_ylabel("regret (nats)")
    ax.set_title("held-out largest size: fitted law vs base LR reused")
    fig.tight_layout()
    write_figure(fig, path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------ the command
def run_compare(sweep_dirs: list[str | Path], out: str | Path | None = None, select: str = "parabola") -> CompareResult:
    """Everything ``scaling compare`` does: :func:`compare`, then (with ``out``) compare.json,
    lr_star.png and regret.png written there; the result's ``files`` lists them."""
    result = compare(sweep_dirs, select=select)
    if out is None:
        return result
    out = Path(out)
    records.write_json(out / "compare.json", result.to_json())
    plot_lr_star(result, out / "lr_star.png")
    plot_regret(result, out / "regret.png")
    return dataclasses.replace(result, files=[out / "compare.json", out / "lr_star.png", out / "regret.png"])
