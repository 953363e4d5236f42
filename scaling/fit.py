"""`scaling fit`'s analysis: per-size LR optima and a log-space regression with honest uncertainty.

The law's form, its N conventions and its results object live in :mod:`scaling.law`. Here is
the pipeline that makes one, each step a function a notebook can call, none of which writes a
file: :func:`read_runs` (sweep directories, trainer run directories or runs tables, read by
:mod:`scaling.runs`) -> :func:`select_cells` (per (N, D) cell: seed means per (lr, batch) point,
then parabola / argmin / within:FRAC by :func:`select_cell`, and the bootstrap's resamples) ->
:func:`regress` (statsmodels OLS/WLS, leave-one-cell-out backtest) and :func:`fit_batch_law` ->
:func:`bootstrap_laws` (both laws refitted on every draw) -> :class:`~scaling.law.FitResult`.
:func:`fit_runs` chains them.

Selection, where it differs from MM1's 5-point grid: ``within:FRAC`` keeps every (lr, batch)
point of a cell, at any batch, within FRAC of the cell's best (Step Law's rule); ``parabola``
fits a least-squares quadratic over a window of every point within a factor of 2.2 of the best
LR (:func:`parabola_window`: the three-point vertex on a factor-2 grid, many points on a dense
one, narrowed by the seeds' noise: :func:`parabola_vertex`), and where the batch was swept, a
quadratic surface in (ln lr, ln B) whose stationary point gives (lr*, B*).

:func:`ols` and :func:`fit_line` are the one least-squares fit of ``scaling``: the law's
regression passes ln N (and ln D), ``scaling compare`` ln width or ln depth, the coordinate
check ln width or ln depth against ln activation. Targets, tables, figures and the files of a
fit are :mod:`scaling.report`'s.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from mm1model.config import ConfigError
from mm1model.counting import param_counts
from mm1model.sizes import get_size
from scaling.law import BATCH_FEATURES, FEATURES, BatchLaw, FitResult, check_n_convention
from scaling.runs import read_runs_dir, read_runs_file, single_parametrization

REQUIRED_COLUMNS = ("params", "lr", "loss")
OPTIONAL_COLUMNS = ("size", "tokens", "batch_size", "seq_len", "batch_tokens", "schedule", "seed", "status", "steps",
                    "wall_s", "path", "parametrization")


# --------------------------------------------------------------------------- reading runs
def read_runs(inputs: Sequence[str | Path], n_convention: str = "non_embedding") -> pd.DataFrame:
    """One tidy runs table from sweep directories, trainer run directories and/or runs tables
    (CSV, Parquet, JSONL).

    Columns: ``params`` (N, > 0), ``lr`` (peak LR, > 0), ``loss`` (final validation loss) are
    required; ``size, tokens, batch_size, seq_len, batch_tokens, schedule, seed, status, steps,
    wall_s, path`` optional (the batch in tokens per step: :func:`batch_tokens`). A run with
    status ``diverged`` or a non-finite loss gets loss = +inf (worse than any finite loss);
    status ``failed`` rows are not results and are left out. A missing column, a value that is
    not a number (``6.98O``), an empty loss on a row whose status is not diverged or failed, or a
    non-positive lr/params is a ConfigError naming the file, the row and the column
    (:func:`clean_runs` with ``strict``). A sweep directory's damaged cells are left out with a
    warning line (:func:`scaling.runs.collect_runs`).
    """
    check_n_convention(n_convention)
    if not inputs:
        raise ConfigError("no input: give a sweep directory or a runs table (CSV, Parquet, JSONL)")
    frames = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            frame = read_runs_dir(path)
            if n_convention == "total":
                frame = _recount_total(frame, path)
        elif path.is_file():
            frame = read_runs_file(path)
        else:
            raise ConfigError(f"no such file or directory: {path}")
        frames.append(clean_runs(frame, path, strict=True))
    return pd.concat(frames, ignore_index=True)


def _recount_total(frame: pd.DataFrame, where: Path) -> pd.DataFrame:
    """Sweep results record non-embedding N; the total convention takes each run's recorded LM
    total (config.json's param_counts) or, lacking it, recounts its size from the size table."""
    frame = frame.copy()
    recorded = frame["params_lm_total"] if "params_lm_total" in frame else pd.Series([None] * len(frame))
    totals = []
    for size, total in zip(frame.get("size", [None] * len(frame)), recorded):
        if total is not None and not pd.isna(total):
            totals.append(float(total))
        elif size is not None and not pd.isna(size):
            totals.append(float(param_counts(get_size(str(size))).params_lm_total))
        else:
            raise ConfigError(f"{where}: --n-convention total needs each run's size or recorded LM total")
    frame["params"] = totals
    return frame


# Columns whose every value must be a number (or empty where a run has no result); loss and lr
# are checked row by row, so a typo such as "6.98O" cannot turn a run into a diverged one.
NUMERIC_COLUMNS = ("loss", "lr", "params", "tokens", "batch_size", "seq_len", "batch_tokens")
# Optional positive columns: 0 or empty means not recorded.
OPTIONAL_SIZES = ("tokens", "batch_size", "seq_len", "batch_tokens")
# Statuses of rows that carry no result: their loss (and any other number) may be empty.
NO_RESULT_STATUSES = ("diverged", "failed")


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    return "nothing" if pd.isna(value) else f"{float(value):g}"


def as_number(value: Any) -> float:
    """A runs-table cell as a float: NaN when empty (None, NaN, a blank string); ValueError when
    it is not a number (``'6.98O'``, a boolean, a list)."""
    if value is None:
        return math.nan
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{value!r} is a boolean")
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, str):
        return float(value) if value.strip() else math.nan
    raise ValueError(f"{value!r} is a {type(value).__name__}")


def clean_runs(frame: pd.DataFrame, where: str | Path = "runs table", strict: bool = False) -> pd.DataFrame:
    """``frame`` checked and made ready to select from; a ConfigError naming ``where`` (and the
    row, counted from 1 over the data rows, and the column) for: a missing required column, a
    loss, lr, params or tokens value that is not a number (:func:`as_number`), a non-positive
    lr or params, and with ``strict`` (tables read from files) an empty or NaN loss on a row
    whose status is neither diverged nor failed (an ok run has a loss).

    Then ``failed`` rows are left out; a diverged or non-finite loss becomes +inf (worse than
    any finite loss); tokens, batch_size, seq_len and batch_tokens of 0 mean not recorded (NaN)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(f"{where} lacks column(s) {', '.join(missing)}; required: "
                          f"{', '.join(REQUIRED_COLUMNS)} (optional: {', '.join(OPTIONAL_COLUMNS)})")
    frame = frame.copy().reset_index(drop=True)
    if "status" not in frame:
        frame["status"] = "ok"
    frame["status"] = frame["status"].fillna("ok").astype(str)
    for column in NUMERIC_COLUMNS:
        if column not in frame:
            continue
        values = []
        for row, value in enumerate(frame[column]):
            try:
                values.append(as_number(value))
            except (TypeError, ValueError):
                raise ConfigError(f"{where} row {row + 1}: {column} {value!r} is not a number") from None
        frame[column] = pd.Series(values, index=frame.index, dtype=float)
    if strict:
        empty = frame["loss"].isna() & ~frame["status"].isin(NO_RESULT_STATUSES)
        if empty.any():
            row = int(np.flatnonzero(empty.to_numpy())[0])
            raise ConfigError(f"{where} row {row + 1}: loss is empty on a row with status "
                              f"{frame['status'].iloc[row]!r}: an ok run has a loss (a run without one "
                              f"says diverged or failed in the status column)")
    rows = pd.Series(np.arange(1, len(frame) + 1), index=frame.index)
    keep = frame["status"] != "failed"
    frame, rows = frame[keep].reset_index(drop=True), rows[keep].reset_index(drop=True)
    for column in ("params", "lr", *OPTIONAL_SIZES):
        if column not in frame:
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        if column in OPTIONAL_SIZES:  # optional: 0 or empty means not recorded
            values = values.where(values != 0)
        bad = ~(values > 0) & ~(values.isna() & (column in OPTIONAL_SIZES))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ConfigError(f"{where}: {column} must be positive, got {_shown(frame[column].iloc[row])} "
                              f"(row {rows.iloc[row]})")
        frame[column] = values.astype(float)
    loss = frame["loss"].astype(float)
    loss[~np.isfinite(loss) | (frame["status"] == "diverged")] = math.inf
    frame["loss"] = loss
    if "source_file" not in frame:
        frame["source_file"] = str(where)
    return frame


# --------------------------------------------------------------------------- batch and schedule
def batch_tokens(runs: pd.DataFrame) -> pd.Series | None:
    """Each run's batch in tokens per optimizer step: the ``batch_tokens`` column where the
    table has it, else ``batch_size`` x ``seq_len``; None unless every row has a value."""
    values = runs["batch_tokens"].astype(float) if "batch_tokens" in runs else pd.Series(np.nan, index=runs.index)
    if "batch_size" in runs and "seq_len" in runs:
        values = values.fillna(runs["batch_size"].astype(float) * runs["seq_len"].astype(float))
    return values if len(values) and values.notna().all() else None


def _batch_missing(runs: pd.DataFrame) -> str:
    """What a runs table lacks for the batch in tokens, for the error message."""
    have = [c for c in ("batch_size", "seq_len") if c in runs and runs[c].notna().all()]
    if len(have) == 1:
        return f"they have {have[0]} but no {({'batch_size', 'seq_len'} - set(have)).pop()}"
    return "they have neither batch_tokens nor batch_size and seq_len in every row"


def single_schedule(runs: pd.DataFrame) -> str | None:
    """The runs' LR schedule (the ``schedule`` column's one value; None without the column). A
    ConfigError when they mix schedules: the optimum LR depends on the schedule."""
    if "schedule" not in runs:
        return None
    names = sorted({str(v) for v in runs["schedule"].dropna()})
    if len(names) > 1:
        raise ConfigError(f"runs mix schedules {', '.join(names)}: a law is valid for the schedule it was "
                          "swept with; fit each separately")
    return names[0] if names else None


def single_seq_len(runs: pd.DataFrame) -> int | None:
    """The sweep's sequence length when the runs record one value, else None."""
    values = runs["seq_len"].dropna().unique() if "seq_len" in runs else []
    return int(values[0]) if len(values) == 1 else None


def single_weight_decay_ratio(runs: pd.DataFrame) -> float | None:
    """lambda / peak LR shared by every run (MM1's 0.1 in a default sweep), from the runs'
    ``weight_decay`` column; None when it is missing or the ratio differs between runs (the
    weight-decay timescale rule of :func:`scaling.recipe.sweep_timescale` then has nothing to hold)."""
    if "weight_decay" not in runs or runs["weight_decay"].isna().any():
        return None
    ratios = (pd.to_numeric(runs["weight_decay"], errors="coerce") / runs["lr"]).to_numpy()
    if not np.isfinite(ratios).all() or len(ratios) == 0:
        return None
    return float(ratios[0]) if np.allclose(ratios, ratios[0], rtol=1e-6, atol=0) else None


# --------------------------------------------------------------------------- selection
def parse_select(select: str) -> tuple[str, float | None]:
    """('parabola'|'argmin', None) or ('within', FRAC) from ``--select``."""
    if select in ("parabola", "argmin"):
        return select, None
    if select.startswith("within:"):
        try:
            frac = float(select.split(":", 1)[1])
        except ValueError:
            frac = -1.0
        if not (math.isfinite(frac) and frac >= 0):
            raise ConfigError(f"--select within:FRAC needs a non-negative fraction, got {select!r}")
        return "within", frac
    raise ConfigError(f"unknown --select {select!r}; valid: parabola, argmin, within:FRAC")


# The parabola's window: every finite point within this factor of the best point's LR (or
# batch) on either side, never fewer than the best and its two neighbours. A quadratic is a
# local model of the loss; on the factor-2 grids of MM1's and Step Law's sweeps the window is
# the best point and its neighbours, today's three-point vertex (2.2, not 2: printed grids are
# rounded), and on denser grids the extra points average the noise out.
WINDOW_FACTOR = 2.2
# Inside that window, the second pass keeps the points whose fitted loss is within this many
# noise sds (of a difference of two points) of the vertex, and at least DENSE_WINDOW of them.
NOISE_BAND = 10.0
DENSE_WINDOW = 5


def curve_noise(log_lr: np.ndarray, loss: np.ndarray) -> float:
    """Noise sd of one curve's points estimated from the curve alone (one seed per point): the
    scatter of each interior point about the line through its two neighbours, scaled to one
    point's sd, minus the median such offset (a quadratic offsets every point alike), as a
    median absolute deviation. NaN when fewer than three interior points have finite
    neighbours: no estimate."""
    x, y = np.asarray(log_lr, float), np.asarray(loss, float)
    if len(x) < 5:
        return math.nan
    h1, h2 = x[1:-1] - x[:-2], x[2:] - x[1:-1]
    w1, w2 = h2 / (h1 + h2), h1 / (h1 + h2)
    with np.errstate(invalid="ignore"):
        resid = (y[1:-1] - w1 * y[:-2] - w2 * y[2:]) / np.sqrt(1 + w1 ** 2 + w2 ** 2)
    resid = resid[np.isfinite(resid)]
    if len(resid) < 3:
        return math.nan
    return float(1.4826 * np.median(np.abs(resid - np.median(resid))))


def parabola_window(x: np.ndarray, loss: np.ndarray, best: int) -> tuple[int, int]:
    """Index range [lo, hi] (inclusive) of the quadratic's first pass around ``best``, an
    interior point of the sorted grid ``x`` (ln lr or ln batch) whose two neighbours are
    finite: the best point's neighbours, then every further point within WINDOW_FACTOR of the
    best on the best point's finite stretch (a diverged point ends it)."""
    reach = math.log(WINDOW_FACTOR)
    lo, hi = best - 1, best + 1
    while lo > 0 and np.isfinite(loss[lo - 1]) and x[best] - x[lo - 1] <= reach:
        lo -= 1
    while hi < len(loss) - 1 and np.isfinite(loss[hi + 1]) and x[hi + 1] - x[best] <= reach:
        hi += 1
    return lo, hi


def _quadratic(x: np.ndarray, y: np.ndarray, centre: float, solvers: dict | None = None) -> tuple[float | None, float]:
    """(vertex, curvature) of the least-squares quadratic through (x, y); vertex None when it
    opens downward (x is centred on ``centre`` so the normal equations stay well conditioned).
    ``solvers`` caches the design's pseudo-inverse by window (a bootstrap refits the same ones)."""
    key = ("curve", centre, x.tobytes())
    solver = solvers.get(key) if solvers is not None else None
    if solver is None:
        u = x - centre
        solver = np.linalg.pinv(np.column_stack([np.ones_like(u), u, u * u]))
        if solvers is not None:
            solvers[key] = solver
    _, b, c = solver @ y
    return (centre - b / (2 * c) if c > 0 else None), float(c)


def parabola_vertex(log_lr: np.ndarray, loss: np.ndarray, best: int, noise: float,
                    solvers: dict | None = None) -> tuple[float | None, str | None]:
    """(vertex ln lr, None) of the quadratic around ``best``, or (None, why not).

    Three points in the window (:func:`parabola_window`): their interpolating parabola. More:
    a least-squares quadratic over them, then (when ``noise``, the sd of one point's loss, is
    known) a second fit over the points whose first-pass loss is within NOISE_BAND noise sds
    of its vertex (at least DENSE_WINDOW), which narrows the window where the noise allows; a
    vertex outside its window is refused.
    """
    lo, hi = parabola_window(log_lr, loss, best)
    x, y = log_lr[lo:hi + 1], loss[lo:hi + 1]
    if len(x) == 3:  # the interpolating parabola, as the three-point rule always computed it
        # Second divided difference = the quadratic's leading coefficient.
        curvature = ((y[2] - y[1]) / (x[2] - x[1]) - (y[1] - y[0]) / (x[1] - x[0])) / (x[2] - x[0])
        if not curvature > 0:
            return None, "the quadratic opens downward"
        slope = (y[1] - y[0]) / (x[1] - x[0]) - curvature * (x[0] + x[1])
        return -slope / (2 * curvature), None
    vertex, curvature = _quadratic(x, y, log_lr[best], solvers)
    if vertex is None:
        return None, "the quadratic opens downward"
    if not x[0] <= vertex <= x[-1]:
        return None, "the quadratic's vertex lies outside its window"
    if noise > 0 and math.isfinite(noise):
        rise = curvature * (x - vertex) ** 2
        keep = np.sort(np.argsort(rise, kind="stable")[:max(DENSE_WINDOW, int((rise <= NOISE_BAND * math.sqrt(2) * noise).sum()))])
        if len(keep) < len(x):
            narrow, _ = _quadratic(x[keep], y[keep], log_lr[best], solvers)
            if narrow is not None and x[keep[0]] <= narrow <= x[keep[-1]]:
                vertex = narrow
    return float(vertex), None


def select_curve(log_lr: np.ndarray, loss: np.ndarray, method: str, frac: float | None = None,
                 noise: float | None = None, solvers: dict | None = None) -> tuple[np.ndarray, str | None]:
    """The selected ln lr values of one curve (sorted ln lr, seed-mean losses; +inf = diverged)
    and a fallback note or None. parabola: :func:`parabola_vertex` (argmin when the best is at
    an edge, a neighbour diverged, the quadratic opens downward or its vertex leaves the
    window); argmin: the best point; within: every point with loss <= best * (1 + frac).
    ``noise``: sd of one point's loss (None: :func:`curve_noise` of the curve; 0: no second
    pass); ``solvers``: a cache of least-squares solvers by window (:class:`Cell`'s)."""
    best = int(np.argmin(loss))
    if method == "argmin":
        return log_lr[best:best + 1], None
    if method == "within":
        return log_lr[loss <= loss[best] * (1 + frac)], None
    if best == 0 or best == len(loss) - 1:
        note = "best point at the grid edge"
    elif not (np.isfinite(loss[best - 1]) and np.isfinite(loss[best + 1])):
        note = "a neighbour of the best point diverged"
    else:
        if noise is None:
            noise = curve_noise(log_lr, loss)
        vertex, note = parabola_vertex(log_lr, loss, best, noise, solvers)
        if vertex is not None:
            return np.array([vertex]), None
    return log_lr[best:best + 1], f"argmin used: {note}"


@dataclass
class Cell:
    """One cell of a sweep (a size N, and a horizon D where D enters a law): its (lr, batch)
    points sorted by batch then lr, and its runs. ``log_batch`` is ln of the batch in tokens
    per step when every run's is known (:func:`batch_tokens`), else in sequences, else None;
    ``noise`` is the sd of one run's final loss (:func:`cell_noise`)."""

    label: str
    params: float
    tokens: float | None
    log_lr: np.ndarray  # (P,)
    log_batch: np.ndarray | None  # (P,)
    batch_size: np.ndarray  # (P,) sequences per step, NaN where not recorded
    batch_tokens: np.ndarray  # (P,) tokens per step, NaN where not known
    steps: np.ndarray  # (P,) optimizer steps, NaN where not known
    run_point: np.ndarray  # (R,) each run's point
    run_loss: np.ndarray  # (R,) final loss, +inf where diverged
    noise: float = 0.0
    # Least-squares solvers by window: a bootstrap reselects the same windows again and again.
    solvers: dict = field(default_factory=dict, repr=False, compare=False)
    # Derived: the distinct batches (M,), each point's batch (P,), where each batch's points
    # start, and the runs per point (P,).
    batches: np.ndarray = field(init=False, repr=False, compare=False)
    batch_of: np.ndarray = field(init=False, repr=False, compare=False)
    batch_start: np.ndarray = field(init=False, repr=False, compare=False)
    counts: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        z = self.log_batch if self.log_batch is not None else np.zeros(len(self.log_lr))
        self.batches, self.batch_of = np.unique(z, return_inverse=True)
        self.batch_start = np.searchsorted(z, self.batches)  # points are sorted by batch
        self.counts = np.bincount(self.run_point, minlength=len(self.log_lr))

    def means(self) -> np.ndarray:
        """Seed-mean loss per point; a diverged seed makes its point diverged (+inf)."""
        with np.errstate(invalid="ignore"):
            return np.bincount(self.run_point, weights=self.run_loss, minlength=len(self.log_lr)) / self.counts

    @property
    def batch_swept(self) -> bool:
        return self.log_batch is not None and len(self.batches) > 1


def cell_noise(cell: Cell) -> float:
    """sd of one run's final loss in ``cell``: the seeds' pooled within-point sd where points
    have two or more finite seeds; else each batch's LR curve's :func:`curve_noise`, pooled."""
    loss, point, n = cell.run_loss, cell.run_point, cell.counts
    means = cell.means()
    pooled = np.isfinite(means) & (n >= 2)
    if pooled.any():
        keep = pooled[point]
        return float(math.sqrt(((loss[keep] - means[point[keep]]) ** 2).sum() / (n[pooled] - 1).sum()))
    noises = [curve_noise(cell.log_lr[cell.batch_of == j], means[cell.batch_of == j]) for j in range(len(cell.batches))]
    noises = [v for v in noises if not math.isnan(v)]
    return float(math.sqrt(np.mean(np.square(noises)))) if noises else 0.0


@dataclass(frozen=True)
class Choice:
    """One cell's selection: the regression rows' ln lr (and ln batch), the grid point each row
    takes its batch and steps from (the best point for a vertex), the best point, and a
    fallback note."""

    log_lr: np.ndarray
    log_batch: np.ndarray | None
    points: np.ndarray
    best: int
    note: str | None = None


def _surface(cell: Cell, means: np.ndarray, seen: np.ndarray, best: int) -> tuple[float, float] | str:
    """(ln lr*, ln B*) at the stationary point of a least-squares quadratic surface in (ln lr,
    ln B) over a box: the best batch's LR window by the window of the batches' best losses
    (:func:`parabola_window` on each axis), every finite point inside it. A note when the
    surface cannot be used (the caller then falls back to the best batch's curve)."""
    x, z = cell.log_lr, cell.log_batch
    finite = np.isfinite(means)
    present = np.logical_or.reduceat(seen, cell.batch_start)
    if present.sum() < 3:
        return "fewer than three batch sizes"
    j = cell.batch_of[best]
    start = cell.batch_start[j]
    curve = start + np.flatnonzero(seen[start:start + np.count_nonzero(cell.batch_of == j)])
    b = int(np.searchsorted(curve, best))
    if b in (0, len(curve) - 1) or not (finite[curve[b - 1]] and finite[curve[b + 1]]):
        return "the best point is at the edge of its LR curve or next to a diverged run"
    profile = np.minimum.reduceat(np.where(seen & finite, means, np.inf), cell.batch_start)[present]
    batches = cell.batches[present]
    jb = int(np.searchsorted(batches, z[best]))
    if jb in (0, len(batches) - 1):
        return "the best batch is at the edge of the batch grid"
    if not (np.isfinite(profile[jb - 1]) and np.isfinite(profile[jb + 1])):
        return "a neighbouring batch diverged"
    lo, hi = parabola_window(x[curve], means[curve], b)
    jlo, jhi = parabola_window(batches, profile, jb)
    eps = 1e-9
    x_lo, x_hi, z_lo, z_hi = x[curve[lo]] - eps, x[curve[hi]] + eps, batches[jlo] - eps, batches[jhi] + eps
    box = np.flatnonzero(seen & finite & (x >= x_lo) & (x <= x_hi) & (z >= z_lo) & (z <= z_hi))
    key = ("surface", best, box.tobytes())
    solver = cell.solvers.get(key)
    if solver is None:
        u, v = x[box] - x[best], z[box] - z[best]
        design = np.column_stack([np.ones_like(u), u, v, u * u, u * v, v * v])
        solver = np.linalg.pinv(design) if np.linalg.matrix_rank(design) == 6 else "too few points in the window for a surface"
        cell.solvers[key] = solver
    if isinstance(solver, str):
        return solver
    _, bu, bv, cuu, cuv, cvv = solver @ means[box]
    det = 4 * cuu * cvv - cuv * cuv  # the Hessian [[2 cuu, cuv], [cuv, 2 cvv]]
    if not (cuu > 0 and det > 0):
        return "the surface is not convex"
    du, dv = (-2 * cvv * bu + cuv * bv) / det, (cuv * bu - 2 * cuu * bv) / det
    x_opt, z_opt = x[best] + du, z[best] + dv
    if not (x_lo <= x_opt <= x_hi and z_lo <= z_opt <= z_hi):
        return "the surface's stationary point lies outside its window"
    return float(x_opt), float(z_opt)


def select_cell(cell: Cell, means: np.ndarray, method: str, frac: float | None = None) -> Choice | None:
    """``cell``'s selection from seed means ``means`` (one per point; NaN = not seen in a
    bootstrap draw, +inf = diverged); None when no point is finite.

    argmin: the best (lr, batch) point. within: every point of the cell, at any batch, with
    loss <= best * (1 + frac), each its own row (Step Law). parabola: where the batch was swept,
    the stationary point of the quadratic surface (:func:`_surface`), else (and as its fallback)
    the vertex of the best batch's LR curve (:func:`select_curve`), at the best batch.
    """
    finite = np.isfinite(means)
    if not finite.any():
        return None
    best = int(np.argmin(np.where(finite, means, np.inf)))
    z = cell.log_batch
    if method in ("argmin", "within"):
        points = np.array([best]) if method == "argmin" else np.flatnonzero(finite & (means <= means[best] * (1 + frac)))
        return Choice(cell.log_lr[points], z[points] if z is not None else None, points, best)
    seen = ~np.isnan(means)
    prefix = ""
    if cell.batch_swept:
        found = _surface(cell, means, seen, best)
        if not isinstance(found, str):
            return Choice(np.array([found[0]]), np.array([found[1]]), np.array([best]), best)
        prefix = f"no (lr, batch) surface: {found}; "
    curve = np.flatnonzero(seen & (cell.batch_of == cell.batch_of[best]))
    noise = cell.noise / math.sqrt(cell.counts[best])
    chosen, note = select_curve(cell.log_lr[curve], means[curve], "parabola", noise=noise, solvers=cell.solvers)
    note = prefix + note if note else (prefix + "the best batch's LR curve used" if prefix else None)
    return Choice(chosen, z[[best]] if z is not None else None, np.array([best]), best, note)


def _cell_keys(runs: pd.DataFrame, features: Sequence[str], log_batch: pd.Series | None) -> list[str]:
    """Cells are (N, D) where D enters a law: the LR law's ln D term, or the batch law, which
    is fitted in ln D whenever the batch was swept within a size (and every run records D).
    Otherwise one cell per N, as MM1 grouped its sweep."""
    if "tokens" in features:
        return ["params", "tokens"]
    if log_batch is not None and "tokens" in runs and runs["tokens"].notna().all():
        if (log_batch.groupby([runs["params"], runs["tokens"]]).nunique() > 1).any():
            return ["params", "tokens"]
    return ["params"]


def _cells(runs: pd.DataFrame, keys: list[str], log_batch: pd.Series | None,
           tokens_per_step: pd.Series | None) -> tuple[list[Cell], list[dict], list[str]]:
    """The runs as :class:`Cell`\\ s, the all-diverged groups dropped, and notes."""
    cells, dropped, notes = [], [], []
    runs = runs.assign(_z=log_batch if log_batch is not None else 0.0,
                       _bt=tokens_per_step if tokens_per_step is not None else math.nan)
    for key, group in runs.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        label = _label(group, key[0]) + (f" D={key[1]:.3g}" if len(key) > 1 else "")
        if "tokens" not in keys and "tokens" in group and group["tokens"].nunique() > 1:
            notes.append(f"{label}: runs differ in tokens; grouped by params only (see --features params,tokens)")
        if not np.isfinite(group["loss"].to_numpy()).any():
            dropped.append({"size": label, "params": key[0], "n_runs": len(group), "reason": "all runs diverged"})
            notes.append(f"{label}: every run diverged; group dropped")
            continue
        group = group.sort_values(["_z", "lr"], kind="stable")
        pairs = group[["_z", "lr"]].to_numpy()
        uniq, first, point = np.unique(pairs, axis=0, return_index=True, return_inverse=True)
        point = point.ravel()

        def column(name: str) -> np.ndarray:
            return group[name].to_numpy(dtype=float)[first] if name in group else np.full(len(uniq), np.nan)

        steps = column("steps")
        bt = group["_bt"].to_numpy(dtype=float)[first]
        if np.isnan(steps).any() and len(key) > 1:  # D = steps x B: a horizon recorded as tokens
            steps = np.where(np.isnan(steps), key[1] / bt, steps)
        cell = Cell(label=label, params=float(key[0]),
                    tokens=float(key[1]) if len(key) > 1 else _first(group, "tokens"),
                    log_lr=np.log(uniq[:, 1]), log_batch=uniq[:, 0] if log_batch is not None else None,
                    batch_size=column("batch_size"), batch_tokens=bt, steps=steps,
                    run_point=point, run_loss=group["loss"].to_numpy(dtype=float))
        cell.noise = cell_noise(cell)
        cells.append(cell)
    return cells, dropped, notes


def _num(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _optimum(cell: Cell, means: np.ndarray, choice: Choice, method: str, batch_in_tokens: bool) -> dict[str, Any]:
    """A cell's optimum row (FitResult.optima): the selection, the best point and the cell's grid."""
    best = choice.best
    z = cell.log_batch
    curve = np.flatnonzero(z == z[best]) if z is not None else np.arange(len(means))
    position = int(np.flatnonzero(curve == best)[0])
    log_batch_opt = float(np.mean(choice.log_batch)) if choice.log_batch is not None else None
    batch_tokens_opt = math.exp(log_batch_opt) if batch_in_tokens and log_batch_opt is not None else None
    steps_opt = (cell.tokens / batch_tokens_opt if batch_tokens_opt and cell.tokens else _num(cell.steps[best]))
    sizes = sorted({float(b) for b in cell.batch_size if np.isfinite(b)})
    batches = cell.batches
    return {
        "size": cell.label, "params": cell.params, "tokens": cell.tokens,
        "batch_size": _num(cell.batch_size[best]), "batch_sizes": sizes,
        "batch_tokens": _num(cell.batch_tokens[best]), "steps": _num(cell.steps[best]),
        "select": method, "fallback": choice.note,
        "log_lr_opt": float(np.mean(choice.log_lr)), "lr_opt": float(np.exp(np.mean(choice.log_lr))),
        "log_lr_selected": [float(v) for v in choice.log_lr],
        "log_batch_opt": log_batch_opt,
        "log_batch_selected": [float(v) for v in choice.log_batch] if choice.log_batch is not None else None,
        "batch_tokens_opt": batch_tokens_opt, "steps_opt": steps_opt,
        "selected_points": [int(i) for i in choice.points], "best_point": best,
        "loss_best": float(means[best]), "lr_best": float(np.exp(cell.log_lr[best])),
        "at_edge": position in (0, len(curve) - 1),
        "batch_swept": cell.batch_swept,
        "at_batch_edge": bool(len(batches) > 1 and z[best] in (batches[0], batches[-1])),
        "n_runs": int(len(cell.run_loss)), "n_seeds": int(cell.counts.max()), "noise_sd": cell.noise,
        "points": [{"lr": float(np.exp(x)), "loss": float(y), "n": int(n), "batch_size": _num(bs),
                    "batch_tokens": _num(bt), "steps": _num(st)}
                   for x, y, n, bs, bt, st in zip(cell.log_lr, means, cell.counts, cell.batch_size,
                                                  cell.batch_tokens, cell.steps)],
        "lr_ci95": None, "var_log_lr": None,
    }


def resample_means(cell: Cell, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws, points) seed means of ``draws`` resamples of ``cell``'s runs: within each point's
    seeds when every point has two or more, else over all the cell's runs (a point left out of a
    draw is NaN: not seen). +inf where a resampled seed diverged.

    Within a point, the seeds' deviations from their mean are resampled scaled by
    sqrt(n / (n - 1)), so that a draw's mean varies as the seeds do (variance s^2 / n, where
    plain resampling of n seeds gives (n - 1) / n of it: half with two seeds)."""
    n_points, counts = len(cell.log_lr), cell.counts
    runs, loss = len(cell.run_loss), cell.run_loss
    if counts.min() >= 2:
        order = np.argsort(cell.run_point, kind="stable")  # runs of each point side by side
        start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        point = cell.run_point[order]
        idx = order[start[point] + (rng.random((draws, runs)) * counts[point]).astype(int)]
        means = cell.means()
        ok = np.isfinite(means)[cell.run_point]  # a point with a diverged seed is resampled as is
        scale = np.sqrt(counts / (counts - 1))[cell.run_point]
        with np.errstate(invalid="ignore"):
            loss = np.where(ok, means[cell.run_point] + (loss - means[cell.run_point]) * scale, loss)
    else:
        idx = rng.integers(0, runs, (draws, runs))
    loss, point = loss[idx], cell.run_point[idx]
    flat = (np.arange(draws)[:, None] * n_points + point).ravel()
    size = draws * n_points
    n = np.bincount(flat, minlength=size).reshape(draws, n_points)
    bad = np.bincount(flat, weights=~np.isfinite(loss).ravel(), minlength=size).reshape(draws, n_points)
    total = np.bincount(flat, weights=np.where(np.isfinite(loss), loss, 0.0).ravel(), minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = total.reshape(draws, n_points) / n
    means[bad > 0] = math.inf
    means[n == 0] = math.nan
    return means


def select_optima(runs: pd.DataFrame, select: str = "parabola", features: Sequence[str] = ("params",),
                  bootstrap: int = 0, seed: int = 0) -> tuple[list[dict], list[dict], list[str]]:
    """Per-cell optima: (optima rows, dropped groups, warnings). See :func:`select_cells`."""
    optima, dropped, notes, _ = select_cells(runs, select, features, bootstrap, seed)
    return optima, dropped, notes


def select_cells(runs: pd.DataFrame, select: str = "parabola", features: Sequence[str] = ("params",),
                 bootstrap: int = 0, seed: int = 0) -> tuple[list[dict], list[dict], list[str], list[list]]:
    """Per-cell optima, dropped groups, warnings and the bootstrap's selections.

    Cells share ``params`` (and ``tokens`` where D enters a law: :func:`_cell_keys`). Seeds are
    averaged per (lr, batch) point and each cell is selected by :func:`select_cell`. With
    ``bootstrap`` > 0, each of that many draws resamples every cell's runs
    (:func:`resample_means`, seeded by ``seed``) and reselects it: the last element holds one
    list per cell of the draws' :class:`Choice` (None where a draw saw no finite point), and
    each optimum gets the 95% percentile interval ``lr_ci95`` and the variance ``var_log_lr``
    of its representative ln lr (the mean of its rows' ln lr) over the draws.
    """
    method, frac = parse_select(select)
    if "tokens" in features and ("tokens" not in runs or runs["tokens"].isna().any()):
        raise ConfigError(f"--features {','.join(features)} needs a tokens column with a value in every row")
    tokens_per_step = batch_tokens(runs)
    if "batch" in features and tokens_per_step is None:
        raise ConfigError(f"--features {','.join(features)} needs the batch in tokens per optimizer step (a "
                          f"batch_tokens column, or batch_size and seq_len): {_batch_missing(runs)}")
    log_batch = None
    if tokens_per_step is not None:
        log_batch = np.log(tokens_per_step)
    elif "batch_size" in runs and runs["batch_size"].notna().all():
        log_batch = np.log(runs["batch_size"].astype(float))
    cells, dropped, notes = _cells(runs, _cell_keys(runs, features, log_batch), log_batch, tokens_per_step)
    rng = np.random.default_rng(seed)
    optima, draws = [], []
    for cell in cells:
        means = cell.means()
        choice = select_cell(cell, means, method, frac)
        if choice.note:
            notes.append(f"{cell.label}: {choice.note}")
        row = _optimum(cell, means, choice, method, tokens_per_step is not None)
        chosen = []
        if bootstrap > 0:
            chosen = [select_cell(cell, m, method, frac) for m in resample_means(cell, bootstrap, rng)]
            values = np.array([np.mean(c.log_lr) for c in chosen if c is not None])
            if len(values) >= 2:
                row["lr_ci95"] = [float(np.exp(np.percentile(values, 2.5))), float(np.exp(np.percentile(values, 97.5)))]
                row["var_log_lr"] = float(np.var(values, ddof=1))
        optima.append(row)
        draws.append(chosen)
    return optima, dropped, notes, draws


def _label(group: pd.DataFrame, params: float) -> str:
    if "size" in group and group["size"].notna().any():
        return str(group["size"].dropna().iloc[0])
    return f"N={params:.3g}"


def _first(group: pd.DataFrame, column: str) -> float | None:
    if column in group and group[column].notna().any():
        return float(group[column].dropna().iloc[0])
    return None


# --------------------------------------------------------------------------- least squares
def ols(y: np.ndarray, x: np.ndarray, weights: np.ndarray | None = None):
    """statsmodels OLS (WLS with ``weights``) of ``y`` on an intercept and the columns of ``x``
    (one regressor as a vector, several as an (n, k) array). Returns statsmodels' results."""
    import statsmodels.api as sm  # statsmodels takes a second to import; only fits need it

    with warnings.catch_warnings():  # tiny samples: statsmodels warns on df_resid = 0
        warnings.simplefilter("ignore")
        design = with_intercept(x)
        model = sm.WLS(y, design, weights=weights) if weights is not None else sm.OLS(y, design)
        return model.fit()


def with_intercept(x: np.ndarray) -> np.ndarray:
    """The design matrix [1, x] of :func:`ols`."""
    x = np.asarray(x, dtype=float)
    return np.column_stack([np.ones(len(x)), x])


@dataclass(frozen=True)
class Line:
    """y = intercept + slope x by :func:`ols`; ``slope_ci95`` is (NaN, NaN) when no degree of
    freedom is left for an interval (two points)."""

    intercept: float
    slope: float
    slope_ci95: tuple[float, float]

    def at(self, x: float) -> float:
        return self.intercept + self.slope * x


def fit_line(x: Sequence[float], y: Sequence[float]) -> Line:
    """The least-squares line through (x, y): in this project always logs, e.g. ln lr* on
    ln width, or ln mean |activation| on ln depth."""
    res = ols(np.asarray(y, dtype=float), np.asarray(x, dtype=float))
    ci = tuple(float(v) for v in res.conf_int(0.05)[1]) if res.df_resid > 0 else (math.nan, math.nan)
    return Line(intercept=float(res.params[0]), slope=float(res.params[1]), slope_ci95=ci)


# --------------------------------------------------------------------------- the law's regression
# A regression row's column for each feature of the LR law.
FEATURE_COLUMNS = {"params": "log_params", "tokens": "log_tokens", "batch": "log_batch"}
# |correlation| above which two regressors are reported as not separately identified.
COLLINEAR = 0.95


def regression_rows(optima: list[dict], features: Sequence[str] = ("params",)) -> list[dict]:
    """The rows that enter the regression: one per cell (parabola, argmin) or one per selected
    (lr, batch) point (within:FRAC), with ``log_lr``, ``log_params``, ``log_tokens`` (where D is
    recorded), ``log_batch`` (ln of the batch in tokens per step, where known), ``var_log_lr``
    and the row's grid point's ``steps``, ``batch_size`` and ``batch_tokens``."""
    rows = []
    for opt in optima:
        within = opt["select"] == "within"
        log_lrs = opt["log_lr_selected"] if within else [opt["log_lr_opt"]]
        in_tokens = opt.get("batch_tokens_opt") is not None
        log_batches = (opt["log_batch_selected"] if within else [opt["log_batch_opt"]]) if in_tokens else [None] * len(log_lrs)
        for log_lr, log_batch, i in zip(log_lrs, log_batches, opt["selected_points"] if within else [opt["best_point"]]):
            point = opt["points"][i]
            row = {"size": opt["size"], "log_lr": log_lr, "log_params": math.log(opt["params"]),
                   "var_log_lr": opt.get("var_log_lr"), "steps": point["steps"], "batch_size": point["batch_size"],
                   "batch_tokens": point["batch_tokens"]}
            if opt.get("tokens"):
                row["log_tokens"] = math.log(opt["tokens"])
            if log_batch is not None:
                row["log_batch"] = log_batch
            rows.append(row)
    return rows


def _regressors(rows: list[dict], features: Sequence[str]) -> np.ndarray:
    """ln N (ln D, ln B) per regression row: the x of :func:`ols`."""
    return np.array([[r[FEATURE_COLUMNS[f]] for f in features] for r in rows])


def _cell_weights(optima: list[dict]) -> np.ndarray:
    """WLS weight of each cell, 1/var(ln lr*) from the bootstrap, floored at a grid's
    resolution (step^2/12) so a cell whose bootstrap never moved does not get infinite weight."""
    steps = [np.diff(np.unique(np.log([p["lr"] for p in o["points"]]))) for o in optima]
    steps = [s for s in steps if len(s)]
    floor = min(float(s.min()) for s in steps) ** 2 / 12 if steps else 1e-6
    var = np.array([o["var_log_lr"] if o.get("var_log_lr") is not None else math.nan for o in optima])
    if np.isnan(var).any():
        raise ConfigError("--weighted needs a bootstrap interval for every group (use --bootstrap B with B >= 2)")
    return 1.0 / np.maximum(var, floor)


def _weights(rows: list[dict], optima: list[dict]) -> np.ndarray:
    """Each regression row's weight: its cell's (:func:`_cell_weights`)."""
    by_cell = dict(zip([o["size"] for o in optima], _cell_weights(optima)))
    return np.array([by_cell[r["size"]] for r in rows])


def regress(optima: list[dict], features: Sequence[str] = ("params",), weighted: bool = False) -> dict[str, Any]:
    """OLS (WLS with ``weighted``) of ln lr* on the features' regressors (ln N, ln D, ln B) with
    statsmodels, plus a leave-one-cell-out backtest. Returns the FitResult fields it determines."""
    features = list(features)
    terms = ["intercept", *FEATURES[",".join(features)]]
    rows = regression_rows(optima, features)
    if len({r["size"] for r in rows}) < 2:
        raise ConfigError(f"need at least 2 groups with a finite optimum to fit a law, got {len(optima)}")
    x, y = _regressors(rows, features), np.array([r["log_lr"] for r in rows])
    if np.linalg.matrix_rank(with_intercept(x)) < len(terms):
        raise ConfigError(f"the groups do not vary enough to fit {', '.join(terms[1:])} "
                          f"({len(rows)} rows; two-feature fits need regressors that vary independently)")
    w = _weights(rows, optima) if weighted else None
    res = ols(y, x, w)
    df_resid = float(res.df_resid)
    has_err = df_resid > 0
    ci = res.conf_int(0.05) if has_err else None
    for i, row in enumerate(rows):
        row["log_lr_fitted"], row["residual"] = float(res.fittedvalues[i]), float(res.resid[i])
        row["weight"] = float(w[i]) if w is not None else None
    return {
        "coefficients": {t: float(v) for t, v in zip(terms, res.params)},
        "stderr": {t: (float(res.bse[i]) if has_err else None) for i, t in enumerate(terms)},
        "ci95": {t: ([float(ci[i][0]), float(ci[i][1])] if has_err else None) for i, t in enumerate(terms)},
        "r2": float(res.rsquared) if len(rows) > 2 else None,
        "cov": np.asarray(res.cov_params()).tolist() if has_err else None,
        "scale": float(res.scale) if has_err else None,
        "df_resid": df_resid,
        "pred_var_weight": float(np.mean(1.0 / w)) if w is not None else 1.0,
        "residuals": [float(v) for v in res.resid],
        "regression_rows": rows,
        "backtest": backtest(optima, rows, features, w),
    }


def _cell_regressors(opt: dict, features: Sequence[str]) -> list[float]:
    """A cell's own [1, ln N(, ln D)(, ln B)]: its representative point's, where the law is read."""
    values = {"params": math.log(opt["params"]), "tokens": math.log(opt["tokens"]) if opt.get("tokens") else math.nan,
              "batch": opt["log_batch_opt"] if opt.get("batch_tokens_opt") is not None else math.nan}
    return [1.0] + [values[f] for f in features]


def backtest(optima: list[dict], rows: list[dict], features: Sequence[str], w: np.ndarray | None) -> dict[str, Any]:
    """Leave-one-cell-out: each cell's ln lr* predicted by the law fitted to the others.
    ``error_log_lr`` = predicted - observed (natural log); ``ratio`` = predicted / observed lr."""
    x, y = _regressors(rows, features), np.array([r["log_lr"] for r in rows])
    sizes = np.array([r["size"] for r in rows])
    out = []
    for opt in optima:
        keep = sizes != opt["size"]
        if np.linalg.matrix_rank(with_intercept(x[keep])) < x.shape[1] + 1:
            continue
        res = ols(y[keep], x[keep], w[keep] if w is not None else None)
        predicted = float(np.dot(_cell_regressors(opt, features), res.params))
        error = predicted - opt["log_lr_opt"]
        out.append({"size": opt["size"], "params": opt["params"], "lr_observed": opt["lr_opt"],
                    "lr_predicted": math.exp(predicted), "error_log_lr": error, "ratio": math.exp(error)})
    if not out:
        return {"rows": [], "note": "too few groups to leave one out"}
    errors = np.array([r["error_log_lr"] for r in out])
    return {"rows": out, "mean_abs_error_log_lr": float(np.abs(errors).mean()),
            "rmse_log_lr": float(np.sqrt((errors ** 2).mean())),
            "max_ratio": float(np.exp(np.abs(errors).max()))}


def collinearity_warnings(optima: list[dict], rows: list[dict], features: Sequence[str]) -> list[str]:
    """Warnings for regressors that vary together: ln N and ln D across the cells of a law with
    a D term (a fixed tokens-per-parameter design cannot tell them apart), and ln B against the
    other regressors over the rows of a law with a B term (each cell's B* follows the batch law)."""
    notes = []
    if "tokens" in features:
        cells = np.log([[o["params"], o["tokens"]] for o in optima])
        if (cells.std(axis=0) > 0).all():
            r = float(np.corrcoef(cells.T)[0, 1])
            if abs(r) > COLLINEAR:
                notes.append(f"ln N and ln D are nearly collinear across the {len(optima)} cells (corr {r:+.3f}): "
                             "their coefficients are not separately identified; vary D at fixed N")
    if "batch" in features:
        x = _regressors(rows, features)
        others, batch = with_intercept(x[:, :-1]), x[:, -1]
        resid = batch - others @ np.linalg.lstsq(others, batch, rcond=None)[0]
        spread = float(((batch - batch.mean()) ** 2).sum())
        r = math.sqrt(max(0.0, 1 - float(resid @ resid) / spread)) if spread > 0 else 1.0
        if r > COLLINEAR:
            notes.append(f"ln B is nearly a linear function of the other regressors over the rows (R = {r:.3f}): "
                         "its coefficient is not identified; with parabola or argmin each cell gives one B*, "
                         "which follows the batch law: use within:FRAC so each cell's rows span batches")
    return notes


# --------------------------------------------------------------------------- the batch law
def _batch_rows(optima: list[dict], features: str) -> tuple[np.ndarray, np.ndarray]:
    """(ln B, regressors [ln D(, ln N)]) of the batch law over the cells where the batch was swept."""
    y, x = [], []
    for opt in optima:
        if not opt["batch_swept"]:
            continue
        values = opt["log_batch_selected"] if opt["select"] == "within" else [opt["log_batch_opt"]]
        for value in values:
            y.append(value)
            x.append([math.log(opt["tokens"])] + ([math.log(opt["params"])] if features == "tokens,params" else []))
    return np.array(y), np.array(x).reshape(len(y), -1)


# What the batch law's rows are, by selection rule.
ROWS_OF = {"within": "every kept (lr, batch) point", "parabola": "each cell's B* (the surface's stationary point, "
           "or the best batch where there was none)", "argmin": "each cell's best batch"}


def fit_batch_law(optima: list[dict], features: str = "tokens") -> tuple[BatchLaw | None, str | None]:
    """Step Law's batch law, OLS of ln B on ln D (``features`` "tokens,params": and ln N) over
    the same selected rows as the LR law, in the cells where the batch was swept: (the law,
    None), or (None, why not) where it cannot be fitted, or (None, None) where no batch was swept."""
    swept = [o for o in optima if o["batch_swept"]]
    if not swept:
        return None, None
    if any(o["batch_tokens_opt"] is None for o in swept):
        return None, ("the batch was swept but the runs record neither batch_tokens nor seq_len: no batch law "
                      "(it is in tokens per step)")
    if any(not o.get("tokens") for o in swept) or len({o["tokens"] for o in swept}) < 2:
        return None, "the batch was swept but tokens do not vary across the cells: no batch law (B* = c D^k needs two or more D)"
    y, x = _batch_rows(optima, features)
    terms = ["intercept", *BATCH_FEATURES[features]]
    if np.linalg.matrix_rank(with_intercept(x)) < len(terms):
        return None, f"the swept cells do not vary enough to fit the batch law in {', '.join(terms[1:])}: no batch law"
    res = ols(y, x)
    has_err = res.df_resid > 0
    ci = res.conf_int(0.05) if has_err else None
    return BatchLaw(
        coefficients={t: float(v) for t, v in zip(terms, res.params)}, features=features,
        stderr={t: (float(res.bse[i]) if has_err else None) for i, t in enumerate(terms)},
        ci95={t: ([float(ci[i][0]), float(ci[i][1])] if has_err else None) for i, t in enumerate(terms)},
        n_rows=len(y), r2=float(res.rsquared) if len(y) > 2 else None,
        cov=np.asarray(res.cov_params()).tolist() if has_err else None,
        scale=float(res.scale) if has_err else None, df_resid=float(res.df_resid),
        note=f"{len(y)} rows, {ROWS_OF[swept[0]['select']]} of the {len(swept)} cells where the batch was swept"), None


# --------------------------------------------------------------------------- the fit-level bootstrap
def _fixed_design_refits(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Least-squares coefficients per draw where each cell gives one row with draw-independent
    regressors: ``x`` (cells, terms) with the intercept, ``y`` (draws, cells) with NaN where a
    draw has no row for a cell, ``weights`` (cells,). Draws sharing a pattern of cells are
    solved together; rows of NaN for draws with fewer than two cells or too little variation."""
    out = np.full((len(y), x.shape[1]), math.nan)
    seen = ~np.isnan(y)
    patterns, which = np.unique(seen, axis=0, return_inverse=True)
    root = np.sqrt(weights)
    for p, pattern in enumerate(patterns):
        xs = x[pattern] * root[pattern, None]
        if pattern.sum() < 2 or np.linalg.matrix_rank(xs) < x.shape[1]:
            continue
        draws = np.flatnonzero(which.ravel() == p)
        out[draws] = (np.linalg.pinv(xs) @ (y[np.ix_(draws, np.flatnonzero(pattern))] * root[pattern]).T).T
    return out


def _row_refit(xs: list[np.ndarray], ys: list[np.ndarray], ws: list[np.ndarray], n_terms: int) -> np.ndarray:
    """One draw's weighted least squares over its rows (per cell: regressors with the
    intercept, ln lr or ln B, weights); NaN with fewer than two cells or too little variation."""
    if len(xs) < 2:
        return np.full(n_terms, math.nan)
    x, y, root = np.concatenate(xs), np.concatenate(ys), np.sqrt(np.concatenate(ws))
    beta, _, rank, _ = np.linalg.lstsq(x * root[:, None], y * root, rcond=None)
    return beta if rank == n_terms else np.full(n_terms, math.nan)


def bootstrap_laws(optima: list[dict], draws: list[list], features: Sequence[str], batch_features: str | None = None,
                   weights: np.ndarray | None = None) -> tuple[np.ndarray, int, np.ndarray | None]:
    """Refit the LR law (and, with ``batch_features``, the batch law) on every bootstrap draw's
    selections (``draws``: per cell, the draws' :class:`Choice`, from :func:`select_cells`).

    Returns the LR law's coefficients per successful draw (draws x terms), the number of draws
    whose refit failed (fewer than two cells with a finite optimum, or regressors that no longer
    vary enough), and the batch law's coefficients per draw (its failed draws left out; None
    without ``batch_features``). ``weights``: per cell, for WLS (:func:`_cell_weights`)."""
    n_draws = len(draws[0]) if draws else 0
    weights = np.ones(len(optima)) if weights is None else weights
    log_n = np.array([math.log(o["params"]) for o in optima])
    log_d = np.array([math.log(o["tokens"]) if o.get("tokens") else math.nan for o in optima])
    swept = np.array([o["batch_swept"] for o in optima])
    batch_x = np.column_stack([np.ones(len(optima)), log_d] + ([log_n] if batch_features == "tokens,params" else []))
    one_row = all(o["select"] != "within" for o in optima)
    if one_row:  # one row per cell: the design is the cells' own unless a regressor is ln B*
        y = np.array([[c.log_lr[0] if c is not None else math.nan for c in cell] for cell in draws]).T
        z = np.array([[c.log_batch[0] if c is not None and c.log_batch is not None else math.nan for c in cell]
                      for cell in draws]).T
    if one_row and "batch" not in features:
        cell_x = np.column_stack([np.ones(len(optima))] + [{"params": log_n, "tokens": log_d}[f] for f in features])
        lr = _fixed_design_refits(cell_x, y, weights)
    else:
        lr = np.full((n_draws, len(features) + 1), math.nan)
        for b in range(n_draws):
            xs, ys, ws = [], [], []
            for c, choice in enumerate(cell[b] for cell in draws):
                if choice is None:
                    continue
                m = len(choice.log_lr)
                columns = {"params": np.full(m, log_n[c]), "tokens": np.full(m, log_d[c]), "batch": choice.log_batch}
                xs.append(np.column_stack([np.ones(m)] + [columns[f] for f in features]))
                ys.append(choice.log_lr)
                ws.append(np.full(m, weights[c]))
            lr[b] = _row_refit(xs, ys, ws, lr.shape[1])
    batch = None
    if batch_features:
        if one_row:
            batch = _fixed_design_refits(batch_x[swept], z[:, swept], np.ones(swept.sum()))
        else:
            batch = np.full((n_draws, batch_x.shape[1]), math.nan)
            for b in range(n_draws):
                chosen = [(c, draws[c][b]) for c in np.flatnonzero(swept) if draws[c][b] is not None]
                batch[b] = _row_refit([np.repeat(batch_x[c:c + 1], len(ch.log_batch), axis=0) for c, ch in chosen],
                                      [ch.log_batch for _, ch in chosen], [np.ones(len(ch.log_batch)) for _, ch in chosen],
                                      batch_x.shape[1])
        batch = batch[~np.isnan(batch).any(axis=1)]
    ok = ~np.isnan(lr).any(axis=1)
    return lr[ok], int((~ok).sum()), batch


def _percentile_ci95(coefs: np.ndarray, terms: Sequence[str]) -> dict[str, list[float]]:
    if len(coefs) < 2:
        return {}
    lo, hi = np.percentile(coefs, [2.5, 97.5], axis=0)
    return {t: [float(a), float(b)] for t, a, b in zip(terms, lo, hi)}


def fit_runs(runs: pd.DataFrame, select: str = "parabola", features: str | Sequence[str] = "params",
             weighted: bool = False, bootstrap: int = 0, seed: int = 0,
             n_convention: str = "non_embedding", batch_features: str = "tokens") -> FitResult:
    """Optima -> regression -> :class:`~scaling.law.FitResult` (targets are added by
    :func:`scaling.report.with_targets`).

    ``features``: a key of :data:`scaling.law.FEATURES` ("params", "params,tokens",
    "params,batch", "params,tokens,batch"; batch = tokens per optimizer step, from
    :func:`batch_tokens`). ``batch_features``: the batch law's ("tokens" or "tokens,params"),
    fitted where the batch was swept within cells (:func:`fit_batch_law`). ``bootstrap``: B
    draws (seeded by ``seed``), each resampling the runs within every cell, reselecting every
    cell and refitting both laws: ``bootstrap_coefficients`` / ``bootstrap_ci95`` /
    ``bootstrap_interval`` and each optimum's ``lr_ci95``; ``weighted``: WLS from the optima's
    bootstrap variances. The runs must share one parametrization
    (:func:`scaling.runs.single_parametrization`) and one schedule (:func:`single_schedule`).
    """
    key = features if isinstance(features, str) else ",".join(features)
    if key not in FEATURES:
        raise ConfigError(f"unknown --features {key!r}; valid: {', '.join(FEATURES)}")
    if batch_features not in BATCH_FEATURES:
        raise ConfigError(f"unknown --batch-features {batch_features!r}; valid: {', '.join(BATCH_FEATURES)}")
    feature_list = key.split(",")
    if weighted and bootstrap < 2:
        raise ConfigError("--weighted needs the bootstrap's intervals: add --bootstrap B (B >= 2)")
    if bootstrap < 0:
        raise ConfigError(f"--bootstrap must be >= 0, got {bootstrap}")
    runs = clean_runs(runs)  # diverged -> +inf, failed rows out, bad values refused
    single_parametrization(runs)
    schedule = single_schedule(runs)
    optima, dropped, notes, draws = select_cells(runs, select, feature_list, bootstrap, seed)
    if len(optima) < 2:
        dropped_note = f" ({len(dropped)} dropped: every run diverged)" if dropped else ""
        raise ConfigError(f"need at least 2 groups with a finite optimum, got {len(optima)}{dropped_note}")
    fitted = regress(optima, feature_list, weighted)
    if fitted["df_resid"] <= 0:
        notes.append("no residual degrees of freedom (as many groups as coefficients): no intervals")
    notes += collinearity_warnings(optima, fitted["regression_rows"], feature_list)
    batch, note = fit_batch_law(optima, batch_features)
    if note:
        notes.append(note)
    coefs, failed = np.zeros((0, len(fitted["coefficients"]))), 0
    if bootstrap > 0:
        weights = _cell_weights(optima) if weighted else None
        coefs, failed, batch_coefs = bootstrap_laws(optima, draws, feature_list,
                                                    batch_features if batch else None, weights)
        if batch is not None:
            batch = dataclasses.replace(batch, bootstrap_coefficients=batch_coefs.tolist(),
                                        bootstrap_ci95=_percentile_ci95(batch_coefs, batch.terms))
        if failed:
            notes.append(f"bootstrap: {failed} of {bootstrap} draws could not be refitted and were left out")
    return FitResult(n_convention=n_convention, features=feature_list, source="fit",
                     n_groups=len(optima), select=select, weighted=weighted, bootstrap=bootstrap,
                     seed=seed, optima=optima, dropped_groups=dropped, batch_law=batch,
                     bootstrap_coefficients=coefs.tolist(), bootstrap_failed=failed,
                     bootstrap_ci95=_percentile_ci95(coefs, fitted["coefficients"]),
                     schedule=schedule, seq_len=single_seq_len(runs),
                     weight_decay_ratio=single_weight_decay_ratio(runs), warnings=notes, **fitted)
