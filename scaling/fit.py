"""`scaling fit`'s analysis: per-cell LR optima and a log-space regression with honest uncertainty.

The law's form, its N conventions and its results object live in :mod:`scaling.law`; the
selection of each cell's optimum in :mod:`scaling.optima`. Here is the pipeline that makes a
law, each step a function a notebook can call, none of which writes a file: :func:`read_runs`
(sweep directories, trainer run directories or runs tables, read by :mod:`scaling.runs`) ->
:func:`scaling.optima.select_cells` (per (N, D) cell: seed means per (lr, batch) point, then
parabola / argmin / within:FRAC, and the bootstrap's resamples) -> :func:`regress`
(statsmodels OLS/WLS, leave-one-cell-out backtest) and :func:`fit_batch_law` ->
:func:`bootstrap_laws` (both laws refitted on every draw) -> :class:`~scaling.law.FitResult`.
:func:`fit_runs` chains them.

:func:`ols` and :func:`fit_line` are the one least-squares fit of ``scaling``: the law's
regression passes ln N (and ln D, ln B), ``scaling compare`` ln width or ln depth, the
coordinate check ln width or ln depth against ln activation. Targets, tables, figures and the
files of a fit are :mod:`scaling.report`'s.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from mm1model.config import ConfigError
from mm1model.counting import param_counts
from mm1model.sizes import get_size
from scaling.law import BATCH_FEATURES, FEATURES, BatchLaw, FitResult, check_n_convention
from scaling.optima import select_cells
from scaling.runs import read_runs_dir, read_runs_file, single_parametrization

REQUIRED_COLUMNS = ("params", "lr", "loss")
OPTIONAL_COLUMNS = ("size", "tokens", "batch_size", "seq_len", "batch_tokens", "schedule", "seed", "status", "steps",
                    "wall_s", "path", "parametrization", "init")


# --------------------------------------------------------------------------- reading runs
def read_runs(inputs: Sequence[str | Path], n_convention: str = "non_embedding") -> pd.DataFrame:
    """One tidy runs table from sweep directories, trainer run directories and/or runs tables
    (CSV, Parquet, JSONL).

    Columns: ``params`` (N, > 0), ``lr`` (peak LR, > 0), ``loss`` (final validation loss) are
    required; ``size, tokens, batch_size, seq_len, batch_tokens, schedule, seed, status, steps,
    wall_s, path, init`` optional (the batch in tokens per step: :func:`scaling.optima.batch_tokens`;
    ``init``: :func:`single_init`). A run with
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


# --------------------------------------------------------------------------- schedule and the sweep's settings
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


def single_init(runs: pd.DataFrame) -> str | None:
    """The towers the runs started from checkpoints (the ``init`` column's one value: ``none``,
    ``lm``, ``vit``, ``lm+vit``; None without the column). A ConfigError when they mix: a sweep
    from scratch and one from pretrained checkpoints measure different regimes."""
    if "init" not in runs:
        return None
    names = sorted({str(v) for v in runs["init"].dropna()})
    if len(names) > 1:
        raise ConfigError(f"runs mix pretrained starts (init {', '.join(names)}): a law holds for the regime it was "
                          "swept in (from scratch, or from pretrained towers); fit each separately")
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


# --------------------------------------------------------------------------- least squares
def ols(y: np.ndarray, x: np.ndarray, weights: np.ndarray | None = None):
    """statsmodels OLS (WLS with ``weights``) of ``y`` on an intercept and the columns of ``x``
    (one regressor as a vector, several as an (n, k) array). Returns statsmodels' results."""
    import statsmodels.api as sm  # statsmodels takes a second to import; only fits need it

    with warnings.catch_warnings():  # tiny samples: statsmodels warns on df_resid = 0
        warnings.simplefilter("ignore")
        design = with_intercept(x)
        model = sm.WLS(y, design, weights=weights) if weights is not None else sm.OLS(y, design)
        res = model.fit()
        # statsmodels computes R^2 lazily; a constant y (every cell's B* the same batch) would warn
        # of a division by zero on first use, outside this block
        res.rsquared  # noqa: B018
        return res


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
    if all(o["at_batch_edge"] for o in swept):
        return None, (f"the best batch is at an edge of the swept batches in all {len(swept)} cells where the batch "
                      "was swept: B* lies outside the grid, so no batch law (sweep smaller or larger batches)")
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
    selections (``draws``: per cell, the draws' :class:`scaling.optima.Choice`, from :func:`scaling.optima.select_cells`).

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
    :func:`scaling.optima.batch_tokens`). ``batch_features``: the batch law's ("tokens" or "tokens,params"),
    fitted where the batch was swept within cells (:func:`fit_batch_law`). ``bootstrap``: B
    draws (seeded by ``seed``), each resampling the runs within every cell, reselecting every
    cell and refitting both laws: ``bootstrap_coefficients`` / ``bootstrap_ci95`` /
    ``bootstrap_interval`` and each optimum's ``lr_ci95``; ``weighted``: WLS from the optima's
    bootstrap variances. The runs must share one parametrization
    (:func:`scaling.runs.single_parametrization`), one schedule (:func:`single_schedule`) and one
    pretrained start (:func:`single_init`, recorded as the law's ``init``).
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
    init = single_init(runs)
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
                     schedule=schedule, seq_len=single_seq_len(runs), init=init,
                     weight_decay_ratio=single_weight_decay_ratio(runs), warnings=notes, **fitted)
