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

**Intervals over seeds** (``bootstrap`` draws, default 1000): each draw resamples the seeds of
every size with replacement, the same seed indices for every parametrization of a family (the
arms are paired: seed s is the same initialisation seed on the same data order in every arm,
see sweeps/transfer.toml), then reselects every lr* and refits every line, so each figure
(lr*, best loss, slope, octaves, regret) gets a 95% percentile interval. As the fit's
:func:`scaling.optima.resample_means`, a seed's deviation from its point's mean is scaled by
sqrt(n / (n - 1)) so that a draw's mean varies as the seeds do.

**Verdicts** per family, for each parametrization beside sp: the paired difference "its road
minus SP's road" (lower is better) of the loss at the road's LR (best loss + regret: muP's base
LR reused against SP's fitted law), the regret, the |octaves| of the prediction, the best loss at
the held-out size and |slope|. A verdict is given only where the difference's interval excludes
zero; otherwise "no verdict at this budget", with the seeds per size that a power estimate (a
two-sided 5% test at 80% power, the spread read off the interval's side towards zero and
shrinking as 1/sqrt(seeds): :func:`scaling.intervals.seeds_to_settle`) says would settle it.

**Metrics**: ``overall`` (the final validation loss) or ``text`` (the final validation loss on
the text-only source, ``val_loss_by_source["text"]`` of each result.json): the image path's
bimodality (a muP seed learns to read the image tokens within 100 steps or does not) moves the
overall loss and leaves the text loss.

The steps are `scaling fit`'s own: runs read by :func:`scaling.runs.collect_runs`, labelled by
:class:`scaling.runs.Parametrization` (``label`` is its ``kind``), checked by
:func:`scaling.runs.single_parametrization`; each lr* selected by :func:`scaling.optima.select_cell`
with :func:`scaling.optima.cell_noise`, as :func:`scaling.optima.select_optima` does; slopes and the
hold-out law by :func:`scaling.fit.fit_line` (the bootstrap's refits are the same least squares,
vectorized over draws). :func:`compare` returns a :class:`~scaling.compare_report.CompareResult`;
:func:`run_compare` also writes compare.json and the two figures. The result, its table, record
and figures are :mod:`scaling.compare_report`'s; intervals and the power estimate,
:mod:`scaling.intervals`'; the comparison on disjoint seed sets and their agreement,
:mod:`scaling.seed_sets`.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mm1model import records
from mm1model.config import ConfigError, replace
from mm1model.parametrization import parametrize
from mm1model.sizes import family_of, get_size
from scaling.compare_report import (METHODS, CompareResult, Holdout, SizeOptimum, Slope, Verdict, seeds_text,
                                    write_result)
from scaling.fit import clean_runs, fit_line
from scaling.intervals import Interval, seeds_to_settle
from scaling.optima import Cell, cell_noise, select_cell
from scaling.runs import Parametrization, collect_runs, single_parametrization

SELECTS = ("parabola", "argmin")
# The loss each metric reads: the runs table's column (load_runs adds loss_text).
METRICS = {"overall": "loss", "text": "loss_text"}
DEFAULT_BOOTSTRAP = 1000
# The figures a verdict is given on, in the order printed: each a difference "road minus SP's road".
FIGURES = ("loss at the road's LR", "regret", "|octaves|", "best loss", "|slope|")


# ------------------------------------------------------------------------------------ runs
def load_runs(sweep_dirs: list[str | Path]) -> pd.DataFrame:
    """The runs tables of the sweeps (``scaling.runs.collect_runs``), concatenated, with the
    columns ``base_size, alpha, label`` (the :attr:`~scaling.runs.Parametrization.kind`),
    ``family, x``, ``fixed`` (what the family holds constant: n_layers for width, d_model for
    depth) and ``loss_text`` (the final validation loss on the text-only source, NaN where the
    result records none) added from each cell."""
    if not sweep_dirs:
        raise ConfigError("give at least one sweep directory")
    frames = []
    configs = {}  # (size, parametrization): its model config, built once
    for sweep_dir in sweep_dirs:
        frame = collect_runs(sweep_dir)
        extra = []
        for path, size in zip(frame["path"], frame["size"]):
            model = records.read_json(Path(path) / "cell.json")["train"].get("model") or {}
            par = Parametrization.of(model)
            key = (size, par.name, par.base_size, par.alpha)
            if key not in configs:
                # Building the config validates the cell (a base larger than the size, an unknown
                # parametrization) with the model's own one-line errors.
                configs[key] = parametrize(replace(get_size(size), parametrization=par.name, base_size=par.base_size,
                                                   alpha=par.alpha))
            cfg = configs[key]
            family = family_of(size)
            x = {"width": cfg.lm.d_model, "depth": cfg.lm.n_layers}.get(family)
            # what a family holds fixed: a width family's depth, a depth family's width
            fixed = {"width": cfg.lm.n_layers, "depth": cfg.lm.d_model}.get(family)
            result = Path(path) / "result.json"
            by_source = (records.read_json(result).get("val_loss_by_source") or {}) if result.exists() else {}
            extra.append({"base_size": par.base_size, "alpha": par.alpha, "label": par.kind, "family": family,
                          "x": x, "fixed": fixed, "loss_text": by_source.get("text", math.nan)})
        frames.append(pd.concat([frame, pd.DataFrame(extra, index=frame.index)], axis=1))
    runs = pd.concat(frames, ignore_index=True)
    runs.loc[runs["family"] == "mm1", "x"] = runs.loc[runs["family"] == "mm1", "params"]
    return runs


@dataclasses.dataclass
class SeedCurves:
    """One (label, family, size): its final losses as a seeds x LRs matrix (NaN: no run, +inf:
    diverged) and the :class:`~scaling.optima.Cell` the fit's selection reads."""

    label: str
    family: str
    size: str
    x: float
    seeds: np.ndarray  # (S,) the family's seeds at this size, shared by its labels
    lrs: np.ndarray  # (P,) sorted
    loss: np.ndarray  # (S, P)
    cell: Cell

    @classmethod
    def of(cls, label: str, family: str, size: str, runs: pd.DataFrame, seeds: np.ndarray) -> SeedCurves:
        lrs = np.sort(runs["lr"].unique())
        loss = np.full((len(seeds), len(lrs)), math.nan)
        for seed, lr, value in zip(runs["seed"], runs["lr"], runs["loss"]):
            loss[np.searchsorted(seeds, seed), np.searchsorted(lrs, lr)] = value
        s, p = np.nonzero(~np.isnan(loss))
        cell = Cell(label=size, params=float(runs["params"].iloc[0]), tokens=None, log_lr=np.log(lrs),
                    log_batch=None, batch_size=np.full(len(lrs), math.nan), batch_tokens=np.full(len(lrs), math.nan),
                    steps=np.full(len(lrs), math.nan), run_point=p, run_loss=loss[s, p])
        cell.noise = cell_noise(cell)
        return cls(label, family, size, float(runs["x"].iloc[0]), seeds, lrs, loss, cell)

    def resampled_means(self, idx: np.ndarray) -> np.ndarray:
        """(draws, P) seed means over the seed indices ``idx`` (draws, S): NaN where a draw saw
        no run at an LR, +inf where a drawn seed diverged there. Each seed's deviation from its
        point's mean is scaled by sqrt(n / (n - 1)) (n finite seeds at the point; a point with a
        diverged seed is resampled as is), as :func:`scaling.optima.resample_means`."""
        loss = self.loss
        finite = np.isfinite(loss)
        n = finite.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(finite, loss, 0.0).sum(axis=0) / n
            scale = np.where((n >= 2) & ~np.isinf(loss).any(axis=0), np.sqrt(n / np.maximum(n - 1, 1)), 1.0)
            adjusted = np.where(finite, mean + (loss - mean) * scale, loss)
        sample = adjusted[idx]  # (draws, S, P)
        seen = ~np.isnan(sample)
        counts = seen.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(seen & np.isfinite(sample), sample, 0.0).sum(axis=1) / counts
        means[np.isinf(sample).any(axis=1)] = math.inf
        means[counts == 0] = math.nan
        return means


def _select(curves: SeedCurves, means: np.ndarray, method: str) -> tuple[float, float, str | None]:
    """(lr*, best loss, fallback note) of one curve of seed means, by the fit's selection; NaN
    when no LR is finite."""
    choice = select_cell(curves.cell, means, method)
    if choice is None:
        return math.nan, math.nan, "every LR diverged"
    return float(np.exp(np.mean(choice.log_lr))), float(means[choice.best]), choice.note


def _line(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(intercept, slope) of the least-squares line of each row of ``y`` (draws, K) on ``x``
    (K,): :func:`scaling.fit.fit_line`'s estimate, vectorized over draws; NaN rows stay NaN."""
    xc = x - x.mean()
    slope = ((y - y.mean(axis=1, keepdims=True)) * xc).sum(axis=1) / (xc * xc).sum()
    return y.mean(axis=1) - slope * x.mean(), slope


def _group_figures(sizes: list[SeedCurves], means: list[np.ndarray], base: str | None,
                   method: str) -> dict[str, np.ndarray]:
    """Every figure of one (label, family) for each row of the seed means (one (draws, P) array
    per size, sizes sorted by x): lr* and best loss per size, the slope, and per hold-out
    method the predicted LR, octaves and regret at the largest size."""
    draws = len(means[0])
    lr = np.full((draws, len(sizes)), math.nan)
    best = np.full((draws, len(sizes)), math.nan)
    for k, (curves, m) in enumerate(zip(sizes, means)):
        for b in range(draws):
            lr[b, k], best[b, k], _ = _select(curves, m[b], method)
    log_x, log_lr = np.log([c.x for c in sizes]), np.log(lr)
    out = {"lr_star": lr, "best": best,
           "slope": _line(log_x, log_lr)[1] if len(sizes) >= 2 else np.full(draws, math.nan)}
    target = sizes[-1]
    others = list(range(len(sizes) - 1))
    predictions = {}
    if len(others) >= 2:
        a, b = _line(log_x[others], log_lr[:, others])
        predictions["fitted law"] = np.exp(a + b * log_x[-1])
    if others:
        k = next((i for i in others if sizes[i].size == base), 0)
        predictions["base LR reused"] = lr[:, k]
    for name, pred in predictions.items():
        regret = np.full(draws, math.nan)
        for b in range(draws):
            if math.isfinite(pred[b]) and math.isfinite(best[b, -1]):
                regret[b] = regret_at(list(zip(target.lrs, means[-1][b])), best[b, -1], pred[b])
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"{name}/octaves"] = np.log2(pred / lr[:, -1])
        out[f"{name}/pred"], out[f"{name}/regret"] = pred, regret
    return out


def regret_at(curve: list[tuple[float, float]], best_loss: float, lr: float) -> float:
    """The loss at ``lr`` on a swept curve of (lr, mean loss) points, linearly interpolated in
    log2 LR, minus ``best_loss``: NaN outside the swept LRs, +inf across a diverged point."""
    finite = [(math.log2(a), b) for a, b in curve if math.isfinite(b)]
    xs = [p[0] for p in finite]
    if len(finite) < 2 or not (min(xs) - 1e-9 <= math.log2(lr) <= max(xs) + 1e-9):
        return math.nan
    at = min(max(math.log2(lr), min(xs)), max(xs))  # an edge LR a rounding error outside is the edge
    # A diverged LR inside the grid has no loss: regret across it is unknown, not small.
    inside = [(math.log2(a), b) for a, b in curve if min(xs) <= math.log2(a) <= max(xs) and not math.isnan(b)]
    lo = max((p for p in inside if p[0] <= at), key=lambda p: p[0])
    hi = min((p for p in inside if p[0] >= at), key=lambda p: p[0])
    if not (math.isfinite(lo[1]) and math.isfinite(hi[1])):
        return math.inf
    value = float(np.interp(at, [lo[0], hi[0]], [lo[1], hi[1]])) if hi[0] > lo[0] else lo[1]
    return value - best_loss


def _road_differences(mine: dict[str, np.ndarray], sp: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each verdict figure's difference, road of ``mine`` (its base LR reused) minus SP's (its
    fitted law), per row: lower is better."""
    def road(figs: dict[str, np.ndarray], method: str) -> np.ndarray:
        return figs["best"][:, -1] + figs.get(f"{method}/regret", np.full(len(figs["best"]), math.nan))

    def figure(figs: dict[str, np.ndarray], key: str) -> np.ndarray:
        return figs.get(key, np.full(len(figs["best"]), math.nan))

    with np.errstate(invalid="ignore"):
        return {"loss at the road's LR": road(mine, "base LR reused") - road(sp, "fitted law"),
                "regret": figure(mine, "base LR reused/regret") - figure(sp, "fitted law/regret"),
                "|octaves|": np.abs(figure(mine, "base LR reused/octaves")) - np.abs(figure(sp, "fitted law/octaves")),
                "best loss": mine["best"][:, -1] - sp["best"][:, -1],
                "|slope|": np.abs(mine["slope"]) - np.abs(sp["slope"])}


# ------------------------------------------------------------------------------------ the comparison
def compare(sweep_dirs: list[str | Path], select: str = "parabola", metric: str = "overall",
            seeds: Sequence[int] | None = None, bootstrap: int = 0, bootstrap_seed: int = 0) -> CompareResult:
    """Compare the parametrizations in ``sweep_dirs`` (see the module docstring). ``select``:
    how lr* is read off each loss curve, ``parabola`` or ``argmin`` (the best grid point);
    ``metric``: ``overall`` or ``text`` (:data:`METRICS`); ``seeds``: the seeds to use (None:
    all); ``bootstrap``: draws over seeds for the intervals and verdicts (0: none), seeded by
    ``bootstrap_seed``."""
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    return compare_runs(load_runs(sweep_dirs), select, metric, seeds, bootstrap, bootstrap_seed)


def compare_runs(runs: pd.DataFrame, select: str = "parabola", metric: str = "overall",
                 seeds: Sequence[int] | None = None, bootstrap: int = 0, bootstrap_seed: int = 0) -> CompareResult:
    """:func:`compare` on a runs table with :func:`load_runs`' columns (a notebook's or a test's)."""
    if select not in SELECTS:
        raise ConfigError(f"unknown select {select!r}; valid: {', '.join(SELECTS)}")
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    if bootstrap < 0:
        raise ConfigError(f"bootstrap must be >= 0 draws, got {bootstrap}")
    runs = runs.copy()
    if seeds is not None:
        missing = sorted(set(seeds) - set(runs["seed"].astype(int)))
        if missing:
            raise ConfigError(f"seed(s) {seeds_text(missing)} have no run in these sweeps (seeds run: "
                              f"{seeds_text(sorted(set(runs['seed'].astype(int))))})")
        runs = runs[runs["seed"].astype(int).isin(list(seeds))]
    if metric != "overall":
        ok = runs["status"].fillna("ok") == "ok"
        if not runs.loc[ok, METRICS[metric]].notna().any():
            raise ConfigError(f"metric {metric}: no run records a text-only validation loss "
                              "(val_loss_by_source.text in result.json)")
        runs["loss"] = runs[METRICS[metric]].where(ok, runs["loss"])
        runs = runs[~(ok & runs["loss"].isna())]  # an ok run whose eval saw no text has no loss here
    rng = np.random.default_rng(bootstrap_seed)
    optima, slopes, holdouts, penalties, verdicts = [], [], [], [], []
    for family, fam_runs in runs.groupby("family", sort=True):
        labels = {}
        for label, group in fam_runs.groupby("label", sort=True):
            single_parametrization(group)
            fixed = sorted({int(v) for v in group["fixed"].dropna()})
            if len(fixed) > 1:
                held = {"width": "depths", "depth": "widths"}[family]
                raise ConfigError(f"the {label} runs of the {family} family mix {held} {', '.join(map(str, fixed))} "
                                  "(e.g. the CPU and GPU families): compare one family at a time")
            labels[label] = clean_runs(group)
        # The seeds of a size are the family's, so a draw resamples the same seeds in every arm.
        fam_clean = pd.concat(labels.values())
        seeds_of = {size: np.sort(g["seed"].astype(int).unique()) for size, g in fam_clean.groupby("size")}
        idx = {size: rng.integers(0, len(s), (bootstrap, len(s))) for size, s in seeds_of.items()}
        n_seeds = min(len(s) for s in seeds_of.values())  # what every interval of the family rests on
        figures, point = {}, {}
        for label, group in labels.items():
            order = group.groupby("size")["x"].first().sort_values()
            held_out = order.index[-1]
            curves = [SeedCurves.of(label, family, size, group[group["size"] == size], seeds_of[size])
                      for size in order.index]
            alive = [c for c in curves if np.isfinite(c.cell.means()).any()]
            if not alive or alive[-1].size != held_out:
                n = int((group["size"] == held_out).sum())
                raise ConfigError(f"held-out size {held_out} ({label}, {family} family) has no loss curve: "
                                  f"{n} settled run(s), none ok")
            base = next((b for b in group["base_size"] if isinstance(b, str)), None)
            point[label] = _group_figures(alive, [c.cell.means()[None] for c in alive], base, select)
            if bootstrap:
                figures[label] = _group_figures(alive, [c.resampled_means(idx[c.size]) for c in alive], base, select)
            optima += _optima_rows(alive, point[label], figures.get(label), select, n_seeds)
            p, d = point[label], figures.get(label, {})
            if len(alive) >= 2:
                line = fit_line(np.log([c.x for c in alive]), np.log(p["lr_star"][0]))
                slopes.append(Slope(label, family, line.slope, line.slope_ci95, len(alive),
                                    _bounds(p["slope"][0], d.get("slope"), n_seeds)))
            target = optima[-1]
            for method in METHODS:
                if f"{method}/pred" not in p:
                    continue
                octaves, regret = float(p[f"{method}/octaves"][0]), float(p[f"{method}/regret"][0])
                regret_lo, regret_hi = _bounds(regret, d.get(f"{method}/regret"), n_seeds)
                holdouts.append(Holdout(label, family, target.size, method, float(p[f"{method}/pred"][0]),
                                        target.lr_star, octaves, regret, target.seed_spread,
                                        _bounds(octaves, d.get(f"{method}/octaves"), n_seeds),
                                        (max(regret_lo, 0.0) if math.isfinite(regret_lo) else regret_lo, regret_hi)))
            penalties.append({"label": label, "family": family, "size": target.size, "best_loss": target.best_loss,
                              "best_loss_ci95": target.best_loss_ci95})
        best = min(p["best_loss"] for p in penalties if p["family"] == family)
        for p in penalties:
            if p["family"] == family:
                p["penalty"] = p["best_loss"] - best
        if "sp" in point:
            for label in (lbl for lbl in point if lbl != "sp"):
                values = _road_differences(point[label], point["sp"])
                draws = _road_differences(figures[label], figures["sp"]) if bootstrap else {}
                for name in FIGURES:
                    diff = (Interval.of(values[name][0], draws[name], n_seeds) if bootstrap
                            else Interval(float(values[name][0])))
                    verdicts.append(Verdict(family, label, name, diff, n_seeds, seeds_to_settle(diff, n_seeds)))
    used = sorted(set(runs["seed"].astype(int))) if "seed" in runs else []
    return CompareResult(optima, slopes, holdouts, penalties, verdicts, metric, used, bootstrap)


def _bounds(value: float, draws: np.ndarray | None, n_seeds: int, log: bool = False) -> tuple[float, float]:
    """(lo, hi) of :meth:`Interval.of`; ``log``: of a positive figure (lr*), widened in ln."""
    if draws is None:
        return math.nan, math.nan
    if log:
        with np.errstate(invalid="ignore", divide="ignore"):
            lo, hi = _bounds(math.log(value) if value > 0 else math.nan, np.log(draws), n_seeds)
        return math.exp(lo), math.exp(hi)
    interval = Interval.of(value, draws, n_seeds)
    return interval.lo, interval.hi


def _optima_rows(sizes: list[SeedCurves], point: dict[str, np.ndarray], draws: dict[str, np.ndarray] | None,
                 method: str, n_seeds: int) -> list[SizeOptimum]:
    rows = []
    for k, curves in enumerate(sizes):
        means = curves.cell.means()
        _, _, note = _select(curves, means, method)
        best_lr = int(np.argmin(np.where(np.isfinite(means), means, np.inf)))
        at_best = curves.loss[:, best_lr]
        at_best = at_best[np.isfinite(at_best)]
        rows.append(SizeOptimum(
            label=curves.label, family=curves.family, size=curves.size, x=curves.x, lr_star=float(point["lr_star"][0, k]),
            best_loss=float(point["best"][0, k]),
            seed_spread=float(np.std(at_best, ddof=1)) if len(at_best) > 1 else math.nan,
            curve=[(float(a), float(b)) for a, b in zip(curves.lrs, means)], note=note,
            n_seeds=int((~np.isnan(curves.loss)).any(axis=1).sum()),
            lr_star_ci95=_bounds(float(point["lr_star"][0, k]), None if draws is None else draws["lr_star"][:, k],
                                 n_seeds, log=True),
            best_loss_ci95=_bounds(float(point["best"][0, k]), None if draws is None else draws["best"][:, k],
                                   n_seeds)))
    return rows


# ------------------------------------------------------------------------------------ the command
def run_compare(sweep_dirs: list[str | Path], out: str | Path | None = None, select: str = "parabola",
                metric: str = "overall", seeds: Sequence[int] | None = None, bootstrap: int = DEFAULT_BOOTSTRAP,
                bootstrap_seed: int = 0) -> CompareResult:
    """Everything ``scaling compare`` does on one seed set: :func:`compare`, then (with ``out``)
    compare.json, lr_star.png and regret.png written there; the result's ``files`` lists them."""
    result = compare(sweep_dirs, select, metric, seeds, bootstrap, bootstrap_seed)
    return result if out is None else write_result(result, out)
