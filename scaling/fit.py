"""`scaling fit`'s analysis: per-size LR optima and a log-space regression with honest uncertainty.

The law's form, its N conventions and its results object live in :mod:`scaling.law`. Here is
the pipeline that makes one, each step a function a notebook can call, none of which writes a
file: :func:`read_runs` (sweep directories, trainer run directories or runs tables, read by
:mod:`scaling.runs`) -> :func:`select_optima` (per group: seed means, then parabola / argmin /
within:FRAC by :func:`select_curve`, bootstrap interval) -> :func:`regress` (statsmodels OLS/WLS,
leave-one-group-out backtest) -> :class:`~scaling.law.FitResult`. :func:`fit_runs` chains them.

:func:`ols` and :func:`fit_line` are the one least-squares fit of ``scaling``: the law's
regression passes ln N (and ln D), ``scaling compare`` ln width or ln depth, the coordinate
check ln width or ln depth against ln activation. Targets, tables, figures and the files of a
fit are :mod:`scaling.report`'s.
"""
from __future__ import annotations

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
from scaling.law import FEATURES, FitResult, check_n_convention
from scaling.runs import read_runs_dir, read_runs_file, single_parametrization

REQUIRED_COLUMNS = ("params", "lr", "loss")
OPTIONAL_COLUMNS = ("size", "tokens", "batch_size", "seed", "status", "steps", "wall_s", "path", "parametrization")


# --------------------------------------------------------------------------- reading runs
def read_runs(inputs: Sequence[str | Path], n_convention: str = "non_embedding") -> pd.DataFrame:
    """One tidy runs table from sweep directories, trainer run directories and/or runs tables
    (CSV, Parquet, JSONL).

    Columns: ``params`` (N, > 0), ``lr`` (peak LR, > 0), ``loss`` (final validation loss) are
    required; ``size, tokens, batch_size, seed, status, steps, wall_s, path`` optional. A run with
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
NUMERIC_COLUMNS = ("loss", "lr", "params", "tokens")
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
    any finite loss); tokens and batch size of 0 mean not recorded (NaN)."""
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
    for column in ("params", "lr", "tokens", "batch_size"):
        if column not in frame:
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        if column in ("tokens", "batch_size"):  # optional: 0 or empty means not recorded
            values = values.where(values != 0)
        bad = ~(values > 0) & ~(values.isna() & (column in ("tokens", "batch_size")))
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


def select_curve(log_lr: np.ndarray, loss: np.ndarray, method: str,
                 frac: float | None = None) -> tuple[np.ndarray, str | None]:
    """The selected ln lr values of one curve (sorted ln lr, seed-mean losses; +inf = diverged)
    and a fallback note or None. parabola: vertex of the quadratic through the best point and its
    two neighbours (argmin when the best is at an edge, a neighbour diverged or it opens
    downward); argmin: the best point; within: every point with loss <= best * (1 + frac)."""
    best = int(np.argmin(loss))
    if method == "argmin":
        return log_lr[best:best + 1], None
    if method == "within":
        return log_lr[loss <= loss[best] * (1 + frac)], None
    note = None
    if best == 0 or best == len(loss) - 1:
        note = "best point at the grid edge"
    elif not (np.isfinite(loss[best - 1]) and np.isfinite(loss[best + 1])):
        note = "a neighbour of the best point diverged"
    else:
        x, y = log_lr[best - 1:best + 2], loss[best - 1:best + 2]
        # Second divided difference = the quadratic's leading coefficient.
        curvature = ((y[2] - y[1]) / (x[2] - x[1]) - (y[1] - y[0]) / (x[1] - x[0])) / (x[2] - x[0])
        if not curvature > 0:
            note = "the quadratic opens downward"
        else:
            slope = (y[1] - y[0]) / (x[1] - x[0]) - curvature * (x[0] + x[1])
            return np.array([-slope / (2 * curvature)]), None
    return log_lr[best:best + 1], f"argmin used: {note}"


def _group_keys(features: Sequence[str]) -> list[str]:
    return ["params", "tokens"] if "tokens" in features else ["params"]


def _curve(runs: pd.DataFrame) -> pd.DataFrame:
    """Seed-mean loss per (batch_size, lr) point; a diverged seed makes its point diverged."""
    keys = ["batch_size", "lr"] if "batch_size" in runs and runs["batch_size"].notna().all() else ["lr"]
    points = runs.groupby(keys, sort=True)["loss"].agg(["mean", "size"]).reset_index()
    return points.rename(columns={"mean": "loss", "size": "n"})


def select_optima(runs: pd.DataFrame, select: str = "parabola", features: Sequence[str] = ("params",),
                  bootstrap: int = 0, seed: int = 0) -> tuple[list[dict], list[dict], list[str]]:
    """Per-group optima: (optima rows, dropped groups, warnings).

    Groups share ``params`` (and ``tokens`` for two-feature fits). Seeds are averaged per LR; when
    batch size varies the best batch is chosen first and the LR curve is read at it. With
    ``bootstrap`` > 0 the group's runs are resampled (within each LR when every LR has two or
    more seeds, over all runs otherwise) to give a 95% percentile interval ``lr_ci95`` and the
    variance ``var_log_lr`` of the selected ln lr (the representative: the mean of the selected
    ln lr values).
    """
    method, frac = parse_select(select)
    keys = _group_keys(features)
    if "tokens" in keys and ("tokens" not in runs or runs["tokens"].isna().any()):
        raise ConfigError("--features params,tokens needs a tokens column with a value in every row")
    rng = np.random.default_rng(seed)
    optima, dropped, notes = [], [], []
    for key, group in runs.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        label = _label(group, key[0]) + (f" D={key[1]:.3g}" if len(key) > 1 else "")
        if "tokens" not in keys and "tokens" in group and group["tokens"].nunique() > 1:
            notes.append(f"{label}: runs differ in tokens; grouped by params only (see --features params,tokens)")
        points = _curve(group)
        if not np.isfinite(points["loss"]).any():
            dropped.append({"size": label, "params": key[0], "n_runs": len(group), "reason": "all runs diverged"})
            notes.append(f"{label}: every run diverged; group dropped")
            continue
        batch, batches = None, []
        if "batch_size" in points:
            batches = sorted(float(b) for b in points["batch_size"].unique())
            batch = float(points.loc[points["loss"].idxmin(), "batch_size"])
            points = points[points["batch_size"] == batch]
        log_lr = np.log(points["lr"].to_numpy())
        loss = points["loss"].to_numpy()
        chosen, note = select_curve(log_lr, loss, method, frac)
        if note:
            notes.append(f"{label}: {note}")
        row = {
            "size": label, "params": float(key[0]),
            "tokens": float(key[1]) if len(key) > 1 else _first(group, "tokens"),
            "batch_size": batch, "batch_sizes": batches, "select": method, "fallback": note,
            "log_lr_opt": float(np.mean(chosen)), "lr_opt": float(np.exp(np.mean(chosen))),
            "log_lr_selected": [float(v) for v in chosen],
            "loss_best": float(loss.min()), "lr_best": float(np.exp(log_lr[np.argmin(loss)])),
            "at_edge": bool(np.argmin(loss) in (0, len(loss) - 1)),
            "n_runs": int(len(group)), "n_seeds": int(points["n"].max()),
            "points": [{"lr": float(np.exp(x)), "loss": float(y), "n": int(n)}
                       for x, y, n in zip(log_lr, loss, points["n"])],
            "lr_ci95": None, "var_log_lr": None,
        }
        if bootstrap > 0:
            sub = group[group["batch_size"] == batch] if batch is not None else group
            draws = _bootstrap(sub, method, frac, bootstrap, rng)
            if len(draws) >= 2:
                row["lr_ci95"] = [float(np.exp(np.percentile(draws, 2.5))), float(np.exp(np.percentile(draws, 97.5)))]
                row["var_log_lr"] = float(np.var(draws, ddof=1))
        optima.append(row)
    return optima, dropped, notes


def _label(group: pd.DataFrame, params: float) -> str:
    if "size" in group and group["size"].notna().any():
        return str(group["size"].dropna().iloc[0])
    return f"N={params:.3g}"


def _first(group: pd.DataFrame, column: str) -> float | None:
    if column in group and group[column].notna().any():
        return float(group[column].dropna().iloc[0])
    return None


def _bootstrap(runs: pd.DataFrame, method: str, frac: float | None, draws: int,
               rng: np.random.Generator) -> np.ndarray:
    """ln lr* of ``draws`` resamples of one group's runs (failed selections skipped)."""
    lrs, inverse = np.unique(runs["lr"].to_numpy(), return_inverse=True)
    log_lr, loss = np.log(lrs), runs["loss"].to_numpy()
    counts = np.bincount(inverse, minlength=len(lrs))
    out = []
    for _ in range(draws):
        if counts.min() >= 2:  # resample seeds within each LR
            idx = np.concatenate([rng.choice(np.flatnonzero(inverse == j), counts[j]) for j in range(len(lrs))])
        else:  # one seed per LR: resample runs; LRs that drop out are simply not seen
            idx = rng.integers(0, len(loss), len(loss))
        n = np.bincount(inverse[idx], minlength=len(lrs))
        with np.errstate(invalid="ignore"):
            total = np.bincount(inverse[idx], weights=loss[idx], minlength=len(lrs))
        seen = n > 0
        mean = total[seen] / n[seen]
        if not np.isfinite(mean).any():
            continue
        chosen, _ = select_curve(log_lr[seen], mean, method, frac)
        out.append(float(np.mean(chosen)))
    return np.array(out)


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
def regression_rows(optima: list[dict], features: Sequence[str]) -> list[dict]:
    """The rows that enter the regression: one per group (parabola, argmin) or one per selected
    LR point (within:FRAC), with ``log_lr``, ``log_params``, ``log_tokens`` and ``weight``."""
    rows = []
    for opt in optima:
        var = opt.get("var_log_lr")
        for value in opt["log_lr_selected"] if opt["select"] == "within" else [opt["log_lr_opt"]]:
            row = {"size": opt["size"], "log_lr": value, "log_params": math.log(opt["params"]), "var_log_lr": var}
            if "tokens" in features:
                row["log_tokens"] = math.log(opt["tokens"])
            rows.append(row)
    return rows


def _regressors(rows: list[dict], features: Sequence[str]) -> np.ndarray:
    """ln N (and ln D) per regression row: the x of :func:`ols`."""
    columns = ["log_params", "log_tokens"] if "tokens" in features else ["log_params"]
    return np.array([[r[c] for c in columns] for r in rows])


def _weights(rows: list[dict], optima: list[dict]) -> np.ndarray:
    """WLS weights 1/var(ln lr*) from the bootstrap, floored at a grid's resolution (step^2/12)
    so a group whose bootstrap never moved does not get infinite weight."""
    steps = [np.diff(np.log([p["lr"] for p in o["points"]])) for o in optima if len(o["points"]) > 1]
    floor = min(float(s.min()) for s in steps) ** 2 / 12 if steps else 1e-6
    var = np.array([r["var_log_lr"] if r["var_log_lr"] is not None else math.nan for r in rows])
    if np.isnan(var).any():
        raise ConfigError("--weighted needs a bootstrap interval for every group (use --bootstrap B with B >= 2)")
    return 1.0 / np.maximum(var, floor)


def regress(optima: list[dict], features: Sequence[str] = ("params",), weighted: bool = False) -> dict[str, Any]:
    """OLS (WLS with ``weighted``) of ln lr* on ln N (and ln D) with statsmodels, plus a
    leave-one-group-out backtest. Returns the FitResult fields it determines."""
    features = list(features)
    terms = ["intercept", *FEATURES[",".join(features)]]
    rows = regression_rows(optima, features)
    if len({r["size"] for r in rows}) < 2:
        raise ConfigError(f"need at least 2 groups with a finite optimum to fit a law, got {len(optima)}")
    x, y = _regressors(rows, features), np.array([r["log_lr"] for r in rows])
    if np.linalg.matrix_rank(with_intercept(x)) < len(terms):
        raise ConfigError(f"the groups do not vary enough to fit {', '.join(terms[1:])} "
                          f"({len(rows)} rows; two-feature fits need params and tokens that vary independently)")
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


def backtest(optima: list[dict], rows: list[dict], features: Sequence[str], w: np.ndarray | None) -> dict[str, Any]:
    """Leave-one-group-out: each group's ln lr* predicted by the law fitted to the others.
    ``error_log_lr`` = predicted - observed (natural log); ``ratio`` = predicted / observed lr."""
    x, y = _regressors(rows, features), np.array([r["log_lr"] for r in rows])
    sizes = np.array([r["size"] for r in rows])
    out = []
    for opt in optima:
        keep = sizes != opt["size"]
        if np.linalg.matrix_rank(with_intercept(x[keep])) < x.shape[1] + 1:
            continue
        res = ols(y[keep], x[keep], w[keep] if w is not None else None)
        x0 = [1.0, math.log(opt["params"])] + ([math.log(opt["tokens"])] if "tokens" in features else [])
        predicted = float(np.dot(x0, res.params))
        error = predicted - opt["log_lr_opt"]
        out.append({"size": opt["size"], "params": opt["params"], "lr_observed": opt["lr_opt"],
                    "lr_predicted": math.exp(predicted), "error_log_lr": error, "ratio": math.exp(error)})
    if not out:
        return {"rows": [], "note": "too few groups to leave one out"}
    errors = np.array([r["error_log_lr"] for r in out])
    return {"rows": out, "mean_abs_error_log_lr": float(np.abs(errors).mean()),
            "rmse_log_lr": float(np.sqrt((errors ** 2).mean())),
            "max_ratio": float(np.exp(np.abs(errors).max()))}


def batch_law(optima: list[dict]) -> dict[str, Any] | None:
    """Where batch size was swept: OLS of ln(batch*) on ln(tokens) across groups (Step Law's
    B = c D^k form; batch in sequences). None when batch size did not vary."""
    if not any(len(o.get("batch_sizes", [])) > 1 for o in optima):
        return None
    rows = [o for o in optima if o.get("batch_size") is not None]
    tokens = [o["tokens"] for o in rows if o.get("tokens")]
    if len(set(tokens)) < 2 or len(tokens) != len(rows):
        return {"note": "batch size varies but tokens do not: no batch law"}
    line = fit_line(np.log(tokens), np.log([o["batch_size"] for o in rows]))
    return {"coefficients": {"intercept": line.intercept, "ln_tokens": line.slope}, "n_groups": len(rows)}


def fit_runs(runs: pd.DataFrame, select: str = "parabola", features: str | Sequence[str] = "params",
             weighted: bool = False, bootstrap: int = 0, seed: int = 0,
             n_convention: str = "non_embedding") -> FitResult:
    """Optima -> regression -> :class:`~scaling.law.FitResult` (targets are added by
    :func:`scaling.report.with_targets`).

    ``features``: "params" or "params,tokens"; ``bootstrap``: resamples per group for the
    optimum's interval (seeded by ``seed``); ``weighted``: WLS from those intervals. The runs
    must share one parametrization (:func:`scaling.runs.single_parametrization`).
    """
    key = features if isinstance(features, str) else ",".join(features)
    if key not in FEATURES:
        raise ConfigError(f"unknown --features {key!r}; valid: {', '.join(FEATURES)}")
    feature_list = key.split(",")
    if weighted and bootstrap < 2:
        raise ConfigError("--weighted needs the bootstrap's intervals: add --bootstrap B (B >= 2)")
    if bootstrap < 0:
        raise ConfigError(f"--bootstrap must be >= 0, got {bootstrap}")
    runs = clean_runs(runs)  # diverged -> +inf, failed rows out, bad values refused
    single_parametrization(runs)
    optima, dropped, notes = select_optima(runs, select, feature_list, bootstrap, seed)
    if len(optima) < 2:
        dropped_note = f" ({len(dropped)} dropped: every run diverged)" if dropped else ""
        raise ConfigError(f"need at least 2 groups with a finite optimum, got {len(optima)}{dropped_note}")
    fitted = regress(optima, feature_list, weighted)
    if fitted["df_resid"] <= 0:
        notes.append("no residual degrees of freedom (as many groups as coefficients): no intervals")
    return FitResult(n_convention=n_convention, features=feature_list, source="fit",
                     n_groups=len(optima), select=select, weighted=weighted, bootstrap=bootstrap,
                     seed=seed, optima=optima, dropped_groups=dropped,
                     batch_law=batch_law(optima), warnings=notes, **fitted)
