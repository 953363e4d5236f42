"""`scaling fit`: per-size LR optima, a log-space regression with honest uncertainty.

The law is MM1's form (McKinzie et al. 2024, Sec. "Model Scaling"):

    ln(lr*) = intercept + ln_params * ln(N)                      (--features params)
    ln(lr*) = intercept + ln_params * ln(N) + ln_tokens * ln(D)  (--features params,tokens; Step Law)

Natural logarithms throughout. N is the language model's parameter count under ``n_convention``
("non_embedding", the default, as Kaplan et al. and Step Law count; or "total", the LM with its
embeddings; the vision tower is never counted). D is training tokens (sequence positions seen).

Pipeline, each step a function a notebook can call: :func:`read_runs` (sweep directory or runs
tables) -> :func:`select_optima` (per group: parabola / argmin / within:FRAC, bootstrap interval)
-> :func:`regress` (statsmodels OLS/WLS, leave-one-group-out backtest) -> :class:`FitResult`.
:func:`fit_runs` chains them. Presentation (tables, figures) lives in ``lr_table.py`` and
``plots.py`` and never fits.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import warnings as _warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from mm1model.config import ConfigError, from_dict, to_dict
from mm1model import records

N_CONVENTIONS = ("non_embedding", "total")
FEATURES = {"params": ("ln_params",), "params,tokens": ("ln_params", "ln_tokens")}
REQUIRED_COLUMNS = ("params", "lr", "loss")
OPTIONAL_COLUMNS = ("size", "tokens", "batch_size", "seed", "status", "steps", "wall_s", "path", "parametrization")


# --------------------------------------------------------------------------- the results object
@dataclass
class FitResult:
    """A fitted LR law with everything needed to predict, bound, tabulate and plot it.

    ``coefficients`` maps ``intercept``, ``ln_params`` and (two-feature fits) ``ln_tokens`` to
    their values; ``cov`` is their covariance in that key order, ``scale`` the residual variance
    of ln lr* and ``df_resid`` its degrees of freedom (Student-t intervals). ``source`` is "fit"
    for a law fitted here and "mm1" for the paper's law (no uncertainty: intervals are None).
    """

    coefficients: dict[str, float]
    n_convention: str = "non_embedding"
    features: list[str] = field(default_factory=lambda: ["params"])
    source: str = "fit"
    stderr: dict[str, float | None] = field(default_factory=dict)
    ci95: dict[str, list[float | None] | None] = field(default_factory=dict)
    r2: float | None = None
    n_groups: int = 0
    select: str | None = None
    weighted: bool = False
    bootstrap: int = 0
    seed: int = 0
    cov: list[list[float]] | None = None
    scale: float | None = None
    df_resid: float | None = None
    # A new observation's variance is scale * pred_var_weight (1 for OLS; mean 1/w for WLS).
    pred_var_weight: float = 1.0
    residuals: list[float | None] = field(default_factory=list)
    optima: list[dict[str, Any]] = field(default_factory=list)
    regression_rows: list[dict[str, Any]] = field(default_factory=list)
    backtest: dict[str, Any] = field(default_factory=dict)
    dropped_groups: list[dict[str, Any]] = field(default_factory=list)
    batch_law: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.n_convention not in N_CONVENTIONS:
            raise ConfigError(f"unknown n_convention {self.n_convention!r}; valid: {', '.join(N_CONVENTIONS)}")
        key = ",".join(self.features)
        if key not in FEATURES:
            raise ConfigError(f"unknown features {key!r}; valid: {', '.join(FEATURES)}")
        missing = [t for t in self.terms if t not in self.coefficients]
        if missing:
            raise ConfigError(f"fit coefficients lack {', '.join(missing)}")

    # -- prediction ------------------------------------------------------------------------
    @property
    def terms(self) -> list[str]:
        """Coefficient names in design-matrix order."""
        return ["intercept", *FEATURES[",".join(self.features)]]

    @property
    def uses_tokens(self) -> bool:
        return "tokens" in self.features

    def design(self, params: float, tokens: float | None = None) -> np.ndarray:
        """The design row [1, ln N(, ln D)] for N parameters (and D tokens)."""
        if not params > 0:
            raise ConfigError(f"params must be positive, got {params}")
        row = [1.0, math.log(params)]
        if self.uses_tokens:
            if tokens is None or not tokens > 0:
                raise ConfigError("this law has a ln_tokens term: give a positive token count")
            row.append(math.log(tokens))
        return np.array(row)

    def log_predict(self, params: float, tokens: float | None = None) -> float:
        """Predicted ln(peak lr) at N = ``params`` (and D = ``tokens``)."""
        beta = np.array([self.coefficients[t] for t in self.terms])
        return float(self.design(params, tokens) @ beta)

    def predict(self, params: float, tokens: float | None = None) -> float:
        """Predicted peak learning rate at N = ``params`` (and D = ``tokens``)."""
        return math.exp(self.log_predict(params, tokens))

    def _interval(self, params: float, tokens: float | None, level: float, new_obs: bool):
        if self.cov is None or self.df_resid is None or self.df_resid <= 0 or self.scale is None:
            return None
        from scipy import stats

        x = self.design(params, tokens)
        var = float(x @ np.array(self.cov) @ x)
        if new_obs:
            var += self.scale * self.pred_var_weight
        half = stats.t.ppf(0.5 + level / 2, self.df_resid) * math.sqrt(max(var, 0.0))
        centre = self.log_predict(params, tokens)
        return math.exp(centre - half), math.exp(centre + half)

    def prediction_interval(self, params: float, tokens: float | None = None,
                            level: float = 0.95) -> tuple[float, float] | None:
        """Interval (in lr, not ln lr) for the optimum of a new size: coefficient uncertainty plus
        the scatter of optima about the line. None when the law carries no uncertainty."""
        return self._interval(params, tokens, level, new_obs=True)

    def confidence_interval(self, params: float, tokens: float | None = None,
                            level: float = 0.95) -> tuple[float, float] | None:
        """Interval (in lr) for the fitted line itself at N (the confidence band)."""
        return self._interval(params, tokens, level, new_obs=False)

    def formula(self) -> str:
        """The law as one line, with 95% CIs where known."""
        def term(name: str) -> str:
            value = self.coefficients[name]
            ci = self.ci95.get(name)
            if ci and ci[0] is not None:
                return f"{value:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]"
            return f"{value:+.4f}"

        parts = [f"{term('ln_params')} ln N"]
        if self.uses_tokens:
            parts.append(f"{term('ln_tokens')} ln D")
        parts.append(term("intercept"))
        return f"lr* = exp({' '.join(parts)})"

    # -- persistence -----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The JSON-ready dict written as fit.json (NaN/inf become null on write)."""
        return to_dict(self)

    def save(self, path: str | Path) -> None:
        records.write_json(path, self.to_json())

    @classmethod
    def from_json(cls, source: str | Path | dict[str, Any]) -> "FitResult":
        """A FitResult from a fit.json path or its parsed dict; a bad file is a ConfigError."""
        if not isinstance(source, dict):
            try:
                source = records.read_json(source)
            except FileNotFoundError:
                raise ConfigError(f"no fit file at {source}") from None
            except json.JSONDecodeError as err:
                raise ConfigError(f"{source} is not valid JSON: {err}") from None
        return from_dict(cls, source, "fit.json")


# --------------------------------------------------------------------------- reading runs
def read_runs(inputs: Sequence[str | Path], n_convention: str = "non_embedding") -> pd.DataFrame:
    """One tidy runs table from sweep directories and/or runs tables (CSV, Parquet, JSONL).

    Columns: ``params`` (N, > 0), ``lr`` (peak LR, > 0), ``loss`` (final validation loss) are
    required; ``size, tokens, batch_size, seed, status, steps, wall_s, path`` optional. A run with
    status ``diverged`` or a non-finite/missing loss gets loss = +inf (worse than any finite
    loss); status ``failed`` rows are not results and are left out. A missing column or a
    non-positive lr/params is a ConfigError naming the file.
    """
    if n_convention not in N_CONVENTIONS:
        raise ConfigError(f"unknown n_convention {n_convention!r}; valid: {', '.join(N_CONVENTIONS)}")
    if not inputs:
        raise ConfigError("no input: give a sweep directory or a runs table (CSV, Parquet, JSONL)")
    frames = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            frame = _sweep_table(path)
            if n_convention == "total":
                frame = _recount_total(frame, path)
        elif path.is_file():
            frame = _read_table(path)
        else:
            raise ConfigError(f"no such file or directory: {path}")
        frames.append(_clean(frame, path))
    return pd.concat(frames, ignore_index=True)


def _sweep_table(sweep_dir: Path) -> pd.DataFrame:
    if (sweep_dir / "sweep.json").exists():  # a `scaling sweep` directory: its own reader
        from scaling.runs import collect_runs

        return collect_runs(sweep_dir)
    return runs_table(sweep_dir)


def runs_table(sweep_dir: str | Path) -> pd.DataFrame:
    """The runs table of a sweep directory: one row per ``result.json`` found below it, with the
    run's ``config.json`` beside it (trainer run-directory layout)."""
    sweep_dir = Path(sweep_dir)
    rows = []
    for result_path in sorted(sweep_dir.rglob("result.json")):
        result = records.read_json(result_path)
        config_path = result_path.with_name("config.json")
        config = records.read_json(config_path) if config_path.exists() else {}
        rows.append({
            "size": config.get("size", result.get("size")),
            "params": result.get("params"),
            "tokens": result.get("tokens"),
            "batch_size": config.get("batch_size", result.get("batch_size")),
            "lr": result.get("lr", config.get("lr")),
            "seed": config.get("seed", result.get("seed")),
            "loss": result.get("final_val_loss"),
            "status": result.get("status", "ok"),
            "steps": result.get("steps"),
            "wall_s": result.get("wall_s"),
            "path": str(result_path.parent),
            # The trainer records every count in config.json; --n-convention total reads this one.
            "params_lm_total": (config.get("param_counts") or {}).get("params_lm_total"),
        })
    if not rows:
        raise ConfigError(f"no runs under {sweep_dir} (looked for */result.json)")
    return pd.DataFrame(rows)


def _recount_total(frame: pd.DataFrame, where: Path) -> pd.DataFrame:
    """Sweep results record non-embedding N; the total convention takes each run's recorded LM
    total (config.json's param_counts) or, lacking it, recounts its size from the size table."""
    from scaling.recipe import resolve_target

    frame = frame.copy()
    recorded = frame["params_lm_total"] if "params_lm_total" in frame else pd.Series([None] * len(frame))
    totals = []
    for size, total in zip(frame.get("size", [None] * len(frame)), recorded):
        if total is not None and not pd.isna(total):
            totals.append(float(total))
        elif size is not None and not pd.isna(size):
            totals.append(resolve_target(str(size), "total")[1])
        else:
            raise ConfigError(f"{where}: --n-convention total needs each run's size or recorded LM total")
    frame["params"] = totals
    return frame


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".jsonl", ".ndjson"):
            return pd.DataFrame(records.read_jsonl(path))
    except (ValueError, OSError) as err:
        raise ConfigError(f"cannot read runs table {path}: {str(err).splitlines()[0]}") from None
    raise ConfigError(f"unknown runs table format {path.name}; use .csv, .parquet or .jsonl")


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    return "nothing" if pd.isna(value) else f"{float(value):g}"


def _clean(frame: pd.DataFrame, where: Path) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(f"{where} lacks column(s) {', '.join(missing)}; required: "
                          f"{', '.join(REQUIRED_COLUMNS)} (optional: {', '.join(OPTIONAL_COLUMNS)})")
    frame = frame.copy()
    if "status" not in frame:
        frame["status"] = "ok"
    frame["status"] = frame["status"].fillna("ok").astype(str)
    frame = frame[frame["status"] != "failed"].reset_index(drop=True)
    for column in ("params", "lr", "tokens", "batch_size"):
        if column not in frame:
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        if column in ("tokens", "batch_size"):  # optional: 0 or empty means not recorded
            values = values.where(values != 0)
        bad = ~(values > 0) & ~(values.isna() & (column in ("tokens", "batch_size")))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ConfigError(f"{where}: {column} must be positive, got {_shown(frame[column].iloc[row])} (row {row + 1})")
        frame[column] = values.astype(float)
    loss = pd.to_numeric(frame["loss"], errors="coerce").astype(float)
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


# --------------------------------------------------------------------------- regression
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


def _design(rows: list[dict], features: Sequence[str]) -> np.ndarray:
    cols = [np.ones(len(rows)), [r["log_params"] for r in rows]]
    if "tokens" in features:
        cols.append([r["log_tokens"] for r in rows])
    return np.column_stack(cols)


def _weights(rows: list[dict], optima: list[dict]) -> np.ndarray:
    """WLS weights 1/var(ln lr*) from the bootstrap, floored at a grid's resolution (step^2/12)
    so a group whose bootstrap never moved does not get infinite weight."""
    steps = [np.diff(np.log([p["lr"] for p in o["points"]])) for o in optima if len(o["points"]) > 1]
    floor = min(float(s.min()) for s in steps) ** 2 / 12 if steps else 1e-6
    var = np.array([r["var_log_lr"] if r["var_log_lr"] is not None else math.nan for r in rows])
    if np.isnan(var).any():
        raise ConfigError("--weighted needs a bootstrap interval for every group (use --bootstrap B with B >= 2)")
    return 1.0 / np.maximum(var, floor)


def _ols(y: np.ndarray, X: np.ndarray, w: np.ndarray | None):
    import statsmodels.api as sm

    with _warnings.catch_warnings():  # tiny samples: statsmodels warns on df_resid = 0
        _warnings.simplefilter("ignore")
        model = sm.WLS(y, X, weights=w) if w is not None else sm.OLS(y, X)
        return model.fit()


def regress(optima: list[dict], features: Sequence[str] = ("params",), weighted: bool = False) -> dict[str, Any]:
    """OLS (WLS with ``weighted``) of ln lr* on ln N (and ln D) with statsmodels, plus a
    leave-one-group-out backtest. Returns the FitResult fields it determines."""
    features = list(features)
    terms = ["intercept", *FEATURES[",".join(features)]]
    rows = regression_rows(optima, features)
    if len({r["size"] for r in rows}) < 2:
        raise ConfigError(f"need at least 2 groups with a finite optimum to fit a law, got {len(optima)}")
    X, y = _design(rows, features), np.array([r["log_lr"] for r in rows])
    if np.linalg.matrix_rank(X) < X.shape[1]:
        raise ConfigError(f"the groups do not vary enough to fit {', '.join(terms[1:])} "
                          f"({len(rows)} rows; two-feature fits need params and tokens that vary independently)")
    w = _weights(rows, optima) if weighted else None
    res = _ols(y, X, w)
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
    X, y = _design(rows, features), np.array([r["log_lr"] for r in rows])
    sizes = np.array([r["size"] for r in rows])
    out = []
    for opt in optima:
        keep = sizes != opt["size"]
        if np.linalg.matrix_rank(X[keep]) < X.shape[1]:
            continue
        res = _ols(y[keep], X[keep], w[keep] if w is not None else None)
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
    X = np.column_stack([np.ones(len(rows)), np.log(tokens)])
    res = _ols(np.log([o["batch_size"] for o in rows]), X, None)
    return {"coefficients": {"intercept": float(res.params[0]), "ln_tokens": float(res.params[1])},
            "n_groups": len(rows)}


def fit_runs(runs: pd.DataFrame, select: str = "parabola", features: str | Sequence[str] = "params",
             weighted: bool = False, bootstrap: int = 0, seed: int = 0,
             n_convention: str = "non_embedding") -> FitResult:
    """Optima -> regression -> :class:`FitResult` (targets are added by :func:`with_targets`).

    ``features``: "params" or "params,tokens"; ``bootstrap``: resamples per group for the
    optimum's interval (seeded by ``seed``); ``weighted``: WLS from those intervals.
    """
    key = features if isinstance(features, str) else ",".join(features)
    if key not in FEATURES:
        raise ConfigError(f"unknown --features {key!r}; valid: {', '.join(FEATURES)}")
    feature_list = key.split(",")
    if weighted and bootstrap < 2:
        raise ConfigError("--weighted needs the bootstrap's intervals: add --bootstrap B (B >= 2)")
    if bootstrap < 0:
        raise ConfigError(f"--bootstrap must be >= 0, got {bootstrap}")
    runs = _clean(runs, Path("runs table"))  # diverged -> +inf, failed rows out, bad values refused
    if "parametrization" in runs and runs["parametrization"].nunique() > 1:
        mixed = ", ".join(sorted(map(str, runs["parametrization"].unique())))
        raise ConfigError(f"the runs mix parametrizations ({mixed}): one law per parametrization; "
                          "fit them one at a time (`scaling compare` sets them side by side)")
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


def with_targets(result: FitResult, targets: Sequence[str | float], reference: FitResult | None = None) -> FitResult:
    """``result`` with its ``targets`` rows filled: name, params, peak_lr, peak_lr_pi95 (and the
    reference law's LR beside it, when given)."""
    from scaling.recipe import recipe_for

    rows = []
    for target in targets:
        recipe = recipe_for(target, result)
        row = {"name": recipe.size or f"{recipe.params:.3g}", "params": recipe.params,
               "peak_lr": recipe.peak_lr,
               "peak_lr_pi95": list(recipe.peak_lr_pi95) if recipe.peak_lr_pi95 else None}
        if result.uses_tokens:
            row["tokens"] = recipe.total_tokens
        if reference is not None:
            row["reference_lr"] = recipe_for(recipe.params, reference).peak_lr
        rows.append(row)
    return dataclasses.replace(result, targets=rows)


# --------------------------------------------------------------------------- the command's work
DEFAULT_TARGETS = ("3B", "7B", "30B")
OUTPUT_FILES = ("fit.json", "lr_table.md", "lr_table.csv", "lr_table.json", "loss_vs_lr.png", "loss_vs_lr.svg",
                "lr_law.png", "lr_law.svg")
REFERENCES = ("mm1",)


def parse_targets(text: str | Sequence[str]) -> list[str]:
    """Targets from ``3B,7B,30B`` or ``3e9,7B``: each a size name or a raw N (checked here, so a
    bad one fails before any work)."""
    from scaling.recipe import resolve_target

    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not items:
        raise ConfigError("--targets is empty; give size names or N values, e.g. 3B,7B,30B or 3e9")
    for item in items:
        resolve_target(item)
    return items


def run_fit(inputs: Sequence[str | Path], out: str | Path, select: str = "parabola",
            features: str = "params", weighted: bool = False, bootstrap: int = 200, seed: int = 0,
            targets: Sequence[str] = DEFAULT_TARGETS, reference: str | None = None,
            n_convention: str = "non_embedding") -> tuple[FitResult, FitResult | None, list[Path]]:
    """Everything ``scaling fit`` does: read, fit, tabulate, plot, write into ``out``.

    Returns (the law, the reference law or None, files written). With no ``inputs`` and
    ``reference="mm1"`` the law is MM1's. Files (fit.json, lr_table.{md,csv,json},
    loss_vs_lr.{png,svg} when there is data, lr_law.{png,svg}) are written to a temporary
    directory beside ``out`` and moved in only when all exist: an error leaves nothing behind.
    """
    from scaling import lr_table, plots
    from scaling.reference import mm1_law

    if reference is not None and reference not in REFERENCES:
        raise ConfigError(f"unknown --reference {reference!r}; valid: {', '.join(REFERENCES)}")
    if not inputs and reference is None:
        raise ConfigError("no input: give a sweep directory or runs tables, or --reference mm1")
    if n_convention not in N_CONVENTIONS:
        raise ConfigError(f"unknown --n-convention {n_convention!r}; valid: {', '.join(N_CONVENTIONS)}")
    targets = parse_targets(targets)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    ref = mm1_law(n_convention)
    if inputs:
        runs = read_runs(inputs, n_convention)
        law = fit_runs(runs, select, features, weighted, bootstrap, seed, n_convention)
        shown_ref = ref if reference else None
    else:
        law, shown_ref = ref, None
    law = with_targets(law, targets, shown_ref)
    rows = lr_table.table_rows(law, targets, shown_ref)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        law.save(tmp / "fit.json")
        records.write_text(tmp / "lr_table.md", lr_table.to_markdown(rows))
        records.write_text(tmp / "lr_table.csv", lr_table.to_csv(rows))
        records.write_text(tmp / "lr_table.json", lr_table.to_json(rows))
        if law.optima:
            plots.loss_vs_lr(law, tmp / "loss_vs_lr")
        plots.lr_law(law, tmp / "lr_law", reference=ref)
        names = sorted(p.name for p in tmp.iterdir())
        out.mkdir(exist_ok=True)
        for name in names:
            os.replace(tmp / name, out / name)  # atomic per file
        for name in set(OUTPUT_FILES) - set(names):  # a figure of an earlier fit is not this fit's
            (out / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return law, shown_ref, [out / n for n in names]
