"""Choosing a sweep design before spending: simulate many sweeps of a candidate design through
the real selection and regression, and read off what the law will look like and what it costs.

A design is a sweep (its sizes, budget per cell and shapes: a :class:`~scaling.sweep_plan.SweepConfig`,
e.g. ``sweeps/mm1.toml``) with its LR grid varied: ``points`` LRs per size, ``spacing`` decades
apart, centred on a prior law's prediction at each N, and ``seeds`` per LR (:class:`Design`).

The world a design is simulated in (:class:`NoiseModel`): each size's final loss against ln lr is
a parabola about its true optimum x*, ``curvature`` nats per (ln lr)^2 below it and
``asymmetry`` times that above (a loss rises faster past the optimum), plus Gaussian seed noise of
``seed_sd`` nats per run. The true optima lie on a law whose intercept is the prior's plus a draw
of sd ``prior_sd`` (how wrong the prior may be: it decides whether a grid centred on the prior
holds the optimum), each size off that law by a draw of sd ``scatter`` (in ln lr). The
defaults (:data:`DEFAULT_NOISE`) are the ones the issue's planning simulation used (curves 1.6x
steeper above the optimum, seed noise 0.002 nats: a large model's run-to-run noise) with a
curvature typical of a 150-step CPU sweep; :func:`estimate_noise` measures all but ``prior_sd`` from
a recorded sweep (``scaling design --from SWEEP_DIR``).

Each simulated sweep is a runs table that goes through :func:`scaling.fit.fit_runs` as a real one
does (parabola selection, statsmodels OLS), and its 95% prediction interval at each target is
:meth:`scaling.law.FitResult.prediction_interval`. :func:`simulate` reports, per target, the
expected width of that interval and the spread of the law's actual error (so whether the
interval is honest), per size the chance the optimum falls inside the grid and the selection's
error, and the design's cost from the planner (:func:`design_cost`). :func:`search_designs`
searches designs under a budget and keeps the cost-versus-width front.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from mm1model.config import ConfigError
from mm1model.paper import GPU_PEAK_FLOPS, TORCHTITAN_MFU
from scaling.fit import fit_runs, read_runs
from scaling.law import FitResult, mm1_law
from scaling.recipe import resolve_target
from scaling.sweep_plan import SweepConfig, SweepPlan, plan_sweep

# The N the sweep planner counts (non-embedding LM parameters): a prior law must count the same.
DESIGN_N_CONVENTION = "non_embedding"
LN10 = math.log(10.0)


@dataclasses.dataclass(frozen=True)
class NoiseModel:
    """The simulated world: loss-curve shape, seed noise, the optima's scatter and the prior's error.

    ``curvature``: nats per (ln lr)^2 below the optimum; ``asymmetry``: the curvature above over
    the one below; ``seed_sd``: sd of one run's final loss (nats); ``scatter``: sd of each size's
    true ln lr* about the true law; ``prior_sd``: sd of the true law's intercept about the
    prior's (ln lr). ``source``: where the numbers came from."""

    curvature: float = 0.1
    asymmetry: float = 1.6
    seed_sd: float = 0.002
    scatter: float = 0.05
    prior_sd: float = 0.3
    source: str = "defaults"

    def __post_init__(self) -> None:
        for name in ("curvature", "asymmetry"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"noise model: {name} must be positive, got {getattr(self, name)}")
        for name in ("seed_sd", "scatter", "prior_sd"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"noise model: {name} must be >= 0, got {getattr(self, name)}")

    def describe(self) -> str:
        return (f"noise ({self.source}): curvature {self.curvature:.3g} nats/(ln lr)^2 below the optimum, "
                f"x{self.asymmetry:.3g} above; seed sd {self.seed_sd:.3g} nats; optima scatter {self.scatter:.3g} "
                f"and prior error {self.prior_sd:.3g} (sd, ln lr)")


DEFAULT_NOISE = NoiseModel()


@dataclasses.dataclass(frozen=True)
class Design:
    """An LR grid per size: ``points`` LRs ``spacing`` decades apart, centred on the prior's
    prediction at each N, ``seeds`` runs per LR."""

    points: int = 5
    spacing: float = 0.3
    seeds: int = 1

    def __post_init__(self) -> None:
        if self.points < 3:
            raise ConfigError(f"a design needs at least 3 LRs per size (a parabola), got {self.points}")
        if not self.spacing > 0:
            raise ConfigError(f"spacing must be positive decades, got {self.spacing}")
        if self.seeds < 1:
            raise ConfigError(f"seeds must be >= 1, got {self.seeds}")

    @property
    def label(self) -> str:
        return f"{self.points} LRs x {self.spacing:g} dec x {self.seeds} seed(s)"

    def offsets(self) -> np.ndarray:
        """The grid's ln lr offsets from its centre."""
        return (np.arange(self.points) - (self.points - 1) / 2) * self.spacing * LN10


def check_prior(prior: FitResult) -> FitResult:
    """``prior`` when it is a law in N alone counting N as the planner does; one ConfigError line otherwise."""
    if prior.n_convention != DESIGN_N_CONVENTION:
        raise ConfigError(f"the prior law counts N as {prior.n_convention!r} parameters (its n_convention); sweep "
                          f"sizes count {DESIGN_N_CONVENTION!r} ones: refit it with --n-convention {DESIGN_N_CONVENTION}")
    if prior.features != ["params"]:
        raise ConfigError(f"the prior law has features {','.join(prior.features)}: a design needs a law in N alone")
    return prior


def load_prior(path: str | Path | None) -> FitResult:
    """MM1's law (None) or a fit.json's, checked by :func:`check_prior`."""
    return check_prior(mm1_law() if path is None else FitResult.from_json(path))


# --------------------------------------------------------------------------- cost
@dataclasses.dataclass(frozen=True)
class CellCosts:
    """What one cell of each size costs: training FLOPs (the planner's, text tokens), and in
    ``unit`` (``GPU-hours`` on a GPU SLURM sweep at the planner's MFU, ``CPU-s`` where a recorded
    sweep measured each size's cells, else ``FLOPs``)."""

    sizes: tuple[str, ...]
    params: tuple[float, ...]
    flops: tuple[float, ...]
    cost: tuple[float, ...]
    unit: str


def cell_costs(plan: SweepPlan, measured_s: dict[str, float] | None = None) -> CellCosts:
    """Each size's cost per cell from the sweep plan (``measured_s``: wall seconds per cell by size)."""
    c = plan.config
    flops = tuple(float(sp.flops or 0.0) for sp in plan.sizes)
    if c.executor == "slurm" and c.slurm.gpus_per_node:
        peak = GPU_PEAK_FLOPS.get(c.slurm.gpu)
        if peak is None:
            raise ConfigError(f"no peak FLOPs for GPU {c.slurm.gpu!r}; known: {', '.join(GPU_PEAK_FLOPS)}")
        cost, unit = tuple(f / (peak * TORCHTITAN_MFU) / 3600 for f in flops), "GPU-hours"
    elif measured_s and all(sp.size in measured_s for sp in plan.sizes):
        cost, unit = tuple(measured_s[sp.size] for sp in plan.sizes), "CPU-s"
    else:
        cost, unit = flops, "FLOPs"
    return CellCosts(sizes=tuple(sp.size for sp in plan.sizes), params=tuple(float(sp.params) for sp in plan.sizes),
                     flops=flops, cost=cost, unit=unit)


def design_cost(costs: CellCosts, design: Design) -> float:
    """A design's cost in ``costs.unit``: points x seeds cells at every size."""
    return design.points * design.seeds * float(sum(costs.cost))


# --------------------------------------------------------------------------- the world
def simulated_runs(sizes: Sequence[str], params: Sequence[float], centres: np.ndarray, truth: np.ndarray,
                   design: Design, noise: NoiseModel, rng: np.random.Generator) -> pd.DataFrame:
    """One simulated sweep's runs table: at each size a grid of ``design`` centred on ``centres``
    (ln lr), losses of the asymmetric parabola about ``truth`` (ln lr*) plus seed noise."""
    rows = []
    for size, n, centre, x_star in zip(sizes, params, centres, truth):
        for x in centre + design.offsets():
            u = x - x_star
            mean = 3.0 + noise.curvature * u * u * (noise.asymmetry if u > 0 else 1.0)
            for seed in range(design.seeds):
                rows.append((size, float(n), float(math.exp(x)), seed, mean + noise.seed_sd * rng.standard_normal()))
    return pd.DataFrame(rows, columns=["size", "params", "lr", "seed", "loss"])


@dataclasses.dataclass
class DesignReport:
    """What :func:`simulate` measured for one design over ``sims`` simulated sweeps.

    Per target (``targets``: name, N): ``pi_width`` the mean width of the fit's 95% prediction
    interval in ln lr (hi/lo = exp of it), ``error_spread`` the width a calibrated 95% interval
    of the law's actual error at that N would have (2 x 1.96 x its RMS; the error is the
    prediction minus a new size's true optimum) and ``coverage``
    how often the interval held it. Per size: ``inside`` the chance the true optimum lies inside
    the grid, ``selection_mae`` the median |selected - true ln lr*|. ``cost`` in ``unit``."""

    design: Design
    noise: NoiseModel
    sims: int
    targets: list[tuple[str, float]]
    pi_width: list[float]
    error_spread: list[float]
    coverage: list[float]
    sizes: tuple[str, ...]
    inside: list[float]
    selection_mae: list[float]
    cells: int
    cost: float
    unit: str
    failed: int = 0

    @property
    def width(self) -> float:
        """What the design is judged by at the largest target: the wider of its fits' mean 95% PI
        and the interval its actual error needs (a grid that misses optima can report a narrow
        interval that does not hold the truth)."""
        return max(self.pi_width[-1], self.error_spread[-1])

    def table(self) -> list[dict[str, Any]]:
        """One row per target."""
        return [{"target": name, "params": n, "pi95_width_ln": w, "pi95_factor": math.exp(w),
                 "error95_width_ln": e, "coverage": c}
                for (name, n), w, e, c in zip(self.targets, self.pi_width, self.error_spread, self.coverage)]

    def summary(self) -> str:
        lines = [f"design: {self.design.label} per size over {', '.join(self.sizes)}: {self.cells} cells, "
                 f"cost {self.cost:.4g} {self.unit}", self.noise.describe(),
                 f"{self.sims} simulated sweeps through the real selection (parabola) and regression"
                 + (f" ({self.failed} could not be fitted)" if self.failed else ""),
                 "target       N   95% PI width (ln lr, x factor)   actual error 95% width   coverage"]
        for row in self.table():
            lines.append(f"{row['target']:>6} {row['params']:9.3g}   {row['pi95_width_ln']:7.3f} (x{row['pi95_factor']:.2f})"
                         f"{'':17}{row['error95_width_ln']:7.3f}{'':12}{row['coverage']:6.1%}")
        lines.append("size   optimum inside grid   median |selection error| (ln lr)")
        for size, p, mae in zip(self.sizes, self.inside, self.selection_mae):
            lines.append(f"{size:>6}   {p:6.1%}{'':14}{mae:.3f}")
        return "\n".join(lines)


def simulate(costs: CellCosts, design: Design, prior: FitResult, noise: NoiseModel = DEFAULT_NOISE,
             targets: Sequence[str | float] = ("3B", "7B", "30B"), sims: int = 200, seed: int = 0) -> DesignReport:
    """Simulate ``sims`` sweeps of ``design`` over ``costs``' sizes in ``noise``'s world around
    ``prior`` and fit each with :func:`scaling.fit.fit_runs` (parabola, no bootstrap)."""
    check_prior(prior)
    if sims < 2:
        raise ConfigError(f"--sims must be >= 2, got {sims}")
    resolved = [resolve_target(t) for t in targets]
    names = [name or f"{n:.3g}" for name, n in resolved]
    target_n = np.array([n for _, n in resolved])
    rng = np.random.default_rng(seed)
    log_n = np.log(costs.params)
    slope = prior.coefficients["ln_params"]
    centres = np.array([prior.log_predict(n) for n in costs.params])
    lo_grid, hi_grid = centres + design.offsets()[0], centres + design.offsets()[-1]
    widths, errors, covered, inside, selected = [], [], [], [], []
    failed = 0
    for _ in range(sims):
        intercept = prior.coefficients["intercept"] + noise.prior_sd * rng.standard_normal()
        truth = intercept + slope * log_n + noise.scatter * rng.standard_normal(len(log_n))
        runs = simulated_runs(costs.sizes, costs.params, centres, truth, design, noise, rng)
        inside.append((truth >= lo_grid) & (truth <= hi_grid))
        try:
            law = fit_runs(runs, select="parabola")
        except ConfigError:
            failed += 1
            continue
        selected.append(np.abs(np.array([o["log_lr_opt"] for o in law.optima]) - truth))
        new_truth = intercept + slope * np.log(target_n) + noise.scatter * rng.standard_normal(len(target_n))
        pred = np.array([law.log_predict(n) for n in target_n])
        pis = [law.prediction_interval(n) for n in target_n]
        if any(pi is None for pi in pis):
            failed += 1
            continue
        lo, hi = np.log([pi[0] for pi in pis]), np.log([pi[1] for pi in pis])
        widths.append(hi - lo)
        errors.append(pred - new_truth)
        covered.append((new_truth >= lo) & (new_truth <= hi))
    if not widths:
        raise ConfigError(f"no simulated sweep of {design.label} gave a law with an interval: need more sizes than "
                          "the law has coefficients")
    # the width a calibrated 95% interval would have: 2 x 1.96 x the RMS error (bias included);
    # steadier than the errors' 2.5-97.5 percentiles over a few dozen sweeps
    spread = 2 * 1.959964 * np.sqrt(np.mean(np.square(errors), axis=0))
    return DesignReport(design=design, noise=noise, sims=sims, targets=list(zip(names, target_n.tolist())),
                        pi_width=np.mean(widths, axis=0).tolist(), error_spread=spread.tolist(),
                        coverage=np.mean(covered, axis=0).tolist(), sizes=costs.sizes,
                        inside=np.mean(inside, axis=0).tolist(),
                        selection_mae=np.median(np.array(selected), axis=0).tolist() if selected else [math.nan] * len(log_n),
                        cells=design.points * design.seeds * len(costs.sizes), cost=design_cost(costs, design),
                        unit=costs.unit, failed=failed)


# --------------------------------------------------------------------------- noise from a sweep
def estimate_noise(runs: pd.DataFrame, prior_sd: float = DEFAULT_NOISE.prior_sd, source: str = "a recorded sweep") -> NoiseModel:
    """The noise model of a recorded sweep, measured with the real selection: seed sd (each
    optimum's pooled seed sd, median over sizes), the curvature below and above each optimum
    (least squares of loss - best on (x - x*)^2 over the points within 1.5 in ln lr on each
    side, medians over sizes), and the optima's scatter about their own fitted line (its
    residual sd, which also holds the selection's noise: an upper bound). ``prior_sd`` is kept."""
    law = fit_runs(runs, select="parabola")
    below, above, sds = [], [], []
    for opt in law.optima:
        x_star = opt["log_lr_opt"]
        pts = [(math.log(p["lr"]), p["loss"]) for p in opt["points"] if math.isfinite(p["loss"])]
        base = min(y for _, y in pts)
        for side, out in ((-1, below), (1, above)):
            u2 = np.array([(x - x_star) ** 2 for x, _ in pts if 0 < side * (x - x_star) <= 1.5])
            dy = np.array([y - base for x, y in pts if 0 < side * (x - x_star) <= 1.5])
            if len(u2) >= 2:
                out.append(float((u2 * dy).sum() / (u2 * u2).sum()))
        if opt["noise_sd"]:
            sds.append(opt["noise_sd"])
    if not below or not above:
        raise ConfigError(f"{source}: too few points on each side of the optima to measure the curvature")
    curvature = float(np.median(below))
    return NoiseModel(curvature=curvature, asymmetry=float(np.median(above)) / curvature,
                      seed_sd=float(np.median(sds)) if sds else DEFAULT_NOISE.seed_sd,
                      scatter=math.sqrt(law.scale) if law.scale else DEFAULT_NOISE.scatter, prior_sd=prior_sd,
                      source=f"estimated from {source}")


def measured_cell_seconds(runs: pd.DataFrame) -> dict[str, float]:
    """Wall seconds of a cell by size in a recorded runs table: its fastest finished (ok) run ({}
    without wall_s). The fastest, not the median: on a shared machine contention only adds wall
    time (tests/data's dense sweep ran some cells at 90-300 s that take ~23 s alone), and a
    diverged run, which may stop early, is left out."""
    if "wall_s" not in runs or "size" not in runs:
        return {}
    ok = runs.dropna(subset=["wall_s"])
    if "status" in ok:
        ok = ok[ok["status"] == "ok"]
    return {str(k): float(v) for k, v in ok.groupby("size")["wall_s"].min().items()}


# --------------------------------------------------------------------------- the search
DEFAULT_POINTS = (3, 5, 7, 9, 11)
DEFAULT_SPACINGS = (0.15, 0.2, 0.3, 1 / 3, 0.45)
DEFAULT_SEEDS = (1, 2, 3)


@dataclasses.dataclass
class SearchResult:
    """Every affordable design simulated (``reports``) and the cost-versus-width front: the
    designs no other beats on both cost and width at the largest target (:attr:`DesignReport.width`)."""

    budget: float
    unit: str
    reports: list[DesignReport]
    front: list[DesignReport]

    def table(self) -> list[dict[str, Any]]:
        return [{"design": r.design.label, "points": r.design.points, "spacing_decades": r.design.spacing,
                 "seeds": r.design.seeds, "cells": r.cells, "cost": r.cost, "unit": r.unit,
                 "pi95_width_ln": r.pi_width[-1], "error95_width_ln": r.error_spread[-1],
                 "coverage": r.coverage[-1], "width_ln": r.width, "min_inside": min(r.inside),
                 "on_front": r in self.front}
                for r in self.reports]

    def summary(self) -> str:
        target = self.reports[0].targets[-1][0]
        lines = [f"{len(self.reports)} designs within {self.budget:.4g} {self.unit}; the cost-vs-width front at {target} "
                 "(width: the wider of the PI and what the actual error needs, ln lr):",
                 f"{'design':<34} {'cells':>5} {'cost':>11}  PI width  actual 95%  coverage  worst P(inside)"]
        for r in sorted(self.front, key=lambda r: r.cost):
            lines.append(f"{r.design.label:<34} {r.cells:>5} {r.cost:11.4g}  {r.pi_width[-1]:8.3f}  "
                         f"{r.error_spread[-1]:10.3f}  {r.coverage[-1]:8.1%}  {min(r.inside):6.1%}")
        return "\n".join(lines)


def search_designs(costs: CellCosts, budget: float, prior: FitResult, noise: NoiseModel = DEFAULT_NOISE,
                   targets: Sequence[str | float] = ("3B", "7B", "30B"), sims: int = 100, seed: int = 0,
                   points: Sequence[int] = DEFAULT_POINTS, spacings: Sequence[float] = DEFAULT_SPACINGS,
                   seeds: Sequence[int] = DEFAULT_SEEDS) -> SearchResult:
    """Simulate every design of ``points`` x ``spacings`` x ``seeds`` that costs at most
    ``budget`` (in ``costs.unit``) and keep the front (see :class:`SearchResult`)."""
    cheapest = min(costs.cost)
    if not budget >= cheapest:
        raise ConfigError(f"--budget {budget:g} {costs.unit} is below one cell (the cheapest, "
                          f"{costs.sizes[int(np.argmin(costs.cost))]}, costs {cheapest:.4g} {costs.unit})")
    designs = [Design(p, s, k) for p in points for s in spacings for k in seeds]
    affordable = [d for d in designs if design_cost(costs, d) <= budget]
    if not affordable:
        smallest = min(designs, key=lambda d: design_cost(costs, d))
        raise ConfigError(f"--budget {budget:g} {costs.unit} buys no design: the cheapest ({smallest.label}) costs "
                          f"{design_cost(costs, smallest):.4g} {costs.unit}")
    reports = [simulate(costs, d, prior, noise, targets, sims, seed) for d in affordable]
    front = [r for r in reports
             if not any(o.cost <= r.cost and o.width < r.width for o in reports if o is not r)]
    return SearchResult(budget=budget, unit=costs.unit, reports=reports, front=front)


def plot_front(result: SearchResult, path: str | Path) -> Path:
    """Cost against the largest target's expected 95% PI width, every design and the front."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.scatter([r.cost for r in result.reports], [r.width for r in result.reports], s=14, c="0.6",
               label="affordable designs")
    front = sorted(result.front, key=lambda r: r.cost)
    ax.plot([r.cost for r in front], [r.width for r in front], "o-", c="C0", label="front")
    for r in front:
        ax.annotate(r.design.label, (r.cost, r.width), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"cost ({result.unit})")
    ax.set_ylabel(f"95% interval width at {result.reports[0].targets[-1][0]} (ln lr)")
    ax.set_title("sweep designs: cost against the law's interval")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def design_plan(config: SweepConfig) -> SweepPlan:
    """The sweep plan that prices a design's cells (its sizes, budget per cell and shapes).

    One batch size and one horizon per size: the simulated world is a law in N alone, and a cell
    is priced as the size's one reference cell, so a sweep with batch or horizon axes is refused
    in one line rather than under-priced."""
    plan = plan_sweep(dataclasses.replace(config, lrs=(), lrs_by_size={}, points=3, span=0.3))
    for sp in plan.sizes:
        batches, horizons = len(sp.curves), max((len(c.horizons) for c in sp.curves), default=1)
        if batches > 1 or horizons > 1:
            raise ConfigError(f"scaling design simulates one batch size and one horizon per size (a law in N alone); "
                              f"{sp.size} has {batches} batch size(s) x {horizons} horizon(s): design a sweep "
                              "without batch_sizes or horizons axes")
    return plan


# --------------------------------------------------------------------------- the command
@dataclasses.dataclass
class DesignResult:
    """What ``scaling design`` made: one design's report, or (``--budget``) the search, and the
    files written (the search's table and figure)."""

    report: DesignReport | None = None
    search: SearchResult | None = None
    files: list[Path] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        text = self.report.summary() if self.report is not None else self.search.summary()
        return "\n".join([text] + [f"wrote {p}" for p in self.files])


def run_design(config: SweepConfig, design: Design, prior_path: str | Path | None = None,
               recorded: str | Path | None = None, noise: dict[str, float] | None = None,
               targets: Sequence[str | float] = ("3B", "7B", "30B"), sims: int = 200, seed: int = 0,
               budget: float | None = None, out: str | Path | None = None) -> DesignResult:
    """``scaling design``: price ``config``'s cells, take the noise model from ``recorded`` (a
    sweep directory or runs table, :func:`estimate_noise`) or the defaults, with ``noise``'s
    entries (NoiseModel fields) on top, and simulate ``design``; with ``budget``, search designs
    and write ``design_front.csv`` and ``design_front.png`` into ``out``."""
    prior = load_prior(prior_path)
    plan = design_plan(config)
    model, measured = DEFAULT_NOISE, None
    if recorded is not None:
        runs = read_runs([recorded])
        model = estimate_noise(runs, source=str(recorded))
        measured = measured_cell_seconds(runs)
    if noise:
        model = dataclasses.replace(model, **{k: v for k, v in noise.items() if v is not None})
    costs = cell_costs(plan, measured)
    if budget is None:
        return DesignResult(report=simulate(costs, design, prior, model, targets, sims, seed))
    search = search_designs(costs, budget, prior, model, targets, sims, seed)
    files = []
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        table = out / "design_front.csv"
        tmp = table.with_suffix(".csv.tmp")
        pd.DataFrame(search.table()).to_csv(tmp, index=False)
        tmp.replace(table)
        files = [table, plot_front(search, out / "design_front.png")]
    return DesignResult(search=search, files=files)
