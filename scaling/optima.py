"""Per-cell optima: which (lr, batch) points of each (N, D) cell enter the laws.

The selection half of `scaling fit` (:mod:`scaling.fit` reads runs and regresses). A cell is the
runs that share N (and D where the horizon enters a law); its points are the seed means per
(lr, batch). :func:`select_cells` selects every cell by :func:`select_cell`, and resamples it
for the bootstrap (:func:`resample_means`):

* ``within:FRAC`` keeps every (lr, batch) point of a cell, at any batch, within FRAC of the
  cell's best (Step Law's rule);
* ``parabola`` fits a least-squares quadratic over a window of every point within a factor of
  2.2 of the best LR (:func:`parabola_window`: the three-point vertex on a factor-2 grid, many
  points on a dense one, narrowed by the seeds' noise: :func:`parabola_vertex`), and where the
  batch was swept, a quadratic surface in (ln lr, ln B) whose stationary point gives (lr*, B*);
* ``argmin`` takes the best point.

Batch sizes are read in tokens per optimizer step (:func:`batch_tokens`). Nothing here fits a law.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from mm1model.config import ConfigError


# --------------------------------------------------------------------------- the batch in tokens
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
