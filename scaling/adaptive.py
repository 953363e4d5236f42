"""The adaptive sweep's strategy: where the next LRs of a size go and when a size stops.

``scaling sweep --adaptive`` (``mode = "adaptive"`` in a sweep file) runs the sizes smallest
first. Each size starts with 3 LRs around a prior: the sweep's own centre (``center_factor`` x
MM1's law) for the first size; for the second, MM1's slope through the first size's optimum; from
the third on, the law fitted to the finished sizes (:func:`scaling.fit.fit_runs`), centred on its
prediction and spread by its 95% prediction interval (:func:`size_prior`). Then, a round at a
time (:func:`next_step`):

* **bracket**: while the best LR (seed means) is at an edge of the size's LRs, add one LR past
  that edge, a grid step further;
* **refine**: once the best is interior, the optimum and its 95% bootstrap interval come from the
  real selection (:func:`scaling.optima.select_cells`, parabola, ``bootstrap`` draws); the size
  stops when the interval's half-width in ln lr is at most ``target_halfwidth`` (and at least
  :data:`MIN_POINTS` LRs have results); else the LRs at
  the vertex +/- half the local spacing join (those not already within a quarter spacing of a
  swept LR);
* a size also stops at ``max_points`` LRs, when no new LR is left to add, or when the best LR is
  at an edge and the LR past it failed (a replayed LR outside the recorded ones, say).

Every decision is a function of the cells on disk, so a rerun (after Ctrl-C or kill -9) makes
the same decisions and continues where the sweep stopped; why each size stopped is recorded in
``DIR/adaptive.json`` (:func:`record_stop`), which ``scaling status`` shows. Nothing here runs a
cell: :func:`scaling.sweep.run_sweep` does, with the executors, records and locks of every sweep.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from mm1model import records
from mm1model.config import ConfigError
from mm1model.paper import MM1_LAW_SLOPE
from scaling.fit import clean_runs, fit_runs
from scaling.optima import select_cells
from scaling.sweep_plan import round_lr

MODES = ("fixed", "adaptive")
RECORD = "adaptive.json"
# The first size's 3 LRs: a factor 2 apart (the demo's and MM1's spacing) when nothing better is known.
FIRST_SPREAD = math.log(2.0)
# A spread from a law's interval is kept within a factor 1.41 and a factor 4 of the centre.
MIN_SPREAD, MAX_SPREAD = math.log(2.0) / 2, math.log(4.0)
# No interval stop before this many LRs have results: through 3 points the parabola interpolates,
# and a bootstrap of 2 seeds per point can then look far narrower than the curve allows.
MIN_POINTS = 5


@dataclasses.dataclass(frozen=True)
class Step:
    """One decision for a size: the LRs to add (none when it stops), why it stopped (None while
    it goes on), and the optimum's 95% half-width in ln lr where it was measured."""

    add: tuple[float, ...] = ()
    stopped: str | None = None
    halfwidth: float | None = None
    lr_opt: float | None = None


def first_lrs(centre: float, spread: float) -> tuple[float, ...]:
    """The 3 LRs a size starts with: exp(centre) and a factor exp(spread) either side."""
    return tuple(round_lr(math.exp(centre + k * spread)) for k in (-1, 0, 1))


def size_prior(done: pd.DataFrame, params: float, default_centre: float) -> tuple[float, float]:
    """(centre, spread) in ln lr for a size of ``params`` N from the finished sizes' runs ``done``
    (see the module docstring); ``default_centre`` for the first size."""
    sizes = done["params"].nunique() if len(done) else 0
    if sizes == 0:
        return default_centre, FIRST_SPREAD
    if sizes == 1:
        optimum = select_cells(clean_runs(done))[0][0]
        return optimum["log_lr_opt"] + MM1_LAW_SLOPE * (math.log(params) - math.log(optimum["params"])), FIRST_SPREAD
    law = fit_runs(done)
    centre = law.log_predict(params)
    interval = law.prediction_interval(params)
    spread = FIRST_SPREAD if interval is None else (math.log(interval[1]) - math.log(interval[0])) / 2
    return centre, min(max(spread, MIN_SPREAD), MAX_SPREAD)


def next_step(runs: pd.DataFrame, planned: Sequence[float], target_halfwidth: float, max_points: int,
              bootstrap: int = 200, seed: int = 0) -> Step:
    """The next decision for one size whose planned LRs are ``planned`` and whose settled runs
    (ok with a loss, or diverged) are ``runs`` (columns params, lr, loss, seed). Every planned
    LR must be settled before this is asked."""
    grid = sorted(set(planned))
    if len(grid) < 3:
        raise ConfigError(f"an adaptive size needs its first 3 LRs before a decision, got {len(grid)}")
    runs = clean_runs(runs)  # diverged -> +inf, failed rows out
    finite = runs[np.isfinite(runs["loss"].astype(float))]
    means = finite.groupby("lr")["loss"].mean() if len(finite) else pd.Series(dtype=float)
    ran = sorted(set(runs["lr"]))  # LRs with a result (a failed LR has none)
    full = len(grid) >= max_points
    if means.empty:  # every LR diverged: only smaller ones can help
        if full:
            return Step(stopped=f"every LR diverged; cap of {max_points} LRs reached")
        return Step(add=(round_lr(grid[0] / (grid[1] / grid[0])),))
    best = float(means.idxmin())
    for edge, side, beyond in ((ran[0], "lower", [lr for lr in grid if lr < ran[0]]),
                               (ran[-1], "upper", [lr for lr in grid if lr > ran[-1]])):
        if not math.isclose(best, edge) or len(ran) < 2:
            continue
        if beyond:  # the LR past this edge was planned and has no result: nothing more to try there
            return Step(stopped=f"best LR {best:.2e} at the {side} edge; the LR past it ({beyond[0]:.2e}) failed")
        if full:
            return Step(stopped=f"best LR {best:.2e} still at the {side} edge at the cap of {max_points} LRs")
        ratio = grid[1] / grid[0] if side == "lower" else grid[-1] / grid[-2]
        return Step(add=(round_lr(edge / ratio if side == "lower" else edge * ratio),))
    optima, _, _, _ = select_cells(runs, "parabola", bootstrap=bootstrap, seed=seed)
    optimum = optima[0]
    ci = optimum.get("lr_ci95")
    half = (math.log(ci[1]) - math.log(ci[0])) / 2 if ci and not optimum["fallback"] else math.inf
    if half <= target_halfwidth and len(ran) >= MIN_POINTS:
        return Step(stopped=f"95% interval of ln lr* +/-{half:.3f} <= target {target_halfwidth:g}", halfwidth=half,
                    lr_opt=optimum["lr_opt"])
    if full:
        return Step(stopped=f"cap of {max_points} LRs reached (95% interval +/-{half:.3f})", halfwidth=half,
                    lr_opt=optimum["lr_opt"])
    vertex = optimum["log_lr_opt"]
    x = np.log(grid)
    i = int(np.searchsorted(x, vertex))
    spacing = float(np.diff(x)[max(0, min(i - 1, len(x) - 2))])
    for _ in range(3):
        h = spacing / 2
        new = [round_lr(math.exp(vertex + d)) for d in (-h, h)]
        new = [lr for lr in dict.fromkeys(new) if np.abs(x - math.log(lr)).min() > h / 2]
        if new:
            return Step(add=tuple(new[:max_points - len(grid)]), halfwidth=half, lr_opt=optimum["lr_opt"])
        spacing = h
    return Step(stopped=f"no new LR near the vertex (95% interval +/-{half:.3f})", halfwidth=half,
                lr_opt=optimum["lr_opt"])


# --------------------------------------------------------------------------- the record
def read_record(out: str | Path) -> dict[str, Any]:
    """``DIR/adaptive.json``: per size, why it stopped ({} before any size stopped)."""
    path = Path(out) / RECORD
    try:
        value = records.read_json(path)
    except FileNotFoundError:
        return {}
    except ValueError as err:
        raise ConfigError(f"{path} cannot be read ({err}); move it aside: the next adaptive run rewrites it") from None
    return value if isinstance(value, dict) else {}


def record_stop(out: str | Path, size: str, step: Step, n_lrs: int) -> None:
    """Record (atomically) why ``size`` stopped, with its optimum and the LRs it took."""
    record = read_record(out)
    record[size] = {"stopped": step.stopped, "halfwidth": step.halfwidth, "lr_opt": step.lr_opt, "lrs": n_lrs}
    records.write_json(Path(out) / RECORD, record)


def stop_lines(out: str | Path) -> list[str]:
    """One line per stopped size of an adaptive sweep (none for a fixed sweep)."""
    return [f"{size}: stopped after {entry.get('lrs')} LRs: {entry.get('stopped')}"
            for size, entry in read_record(out).items()]
