"""The peak-LR law and the batch law as results objects, their fit.json, and MM1's published law.

The LR law is MM1's form (McKinzie et al. 2024, Sec. "Model Scaling"), with Step Law's horizon
term and a batch term as options:

    ln(lr*) = intercept + ln_params ln N                                 (features "params")
    ln(lr*) = intercept + ln_params ln N + ln_tokens ln D                (features "params,tokens"; Step Law)
    ln(lr*) = intercept + ln_params ln N + ln_batch ln B                 (features "params,batch")
    ln(lr*) = intercept + ln_params ln N + ln_tokens ln D + ln_batch ln B (features "params,tokens,batch")

and the batch law (:class:`BatchLaw`, Step Law's B* = c D^k, optionally with an N term):

    ln(B*) = intercept + ln_tokens ln D (+ ln_params ln N)               (batch features "tokens", "tokens,params")

Natural logarithms throughout. N is the language model's parameter count under ``n_convention``
("non_embedding", the default, as Kaplan et al. and Step Law count; or "total", the LM with its
embeddings; the vision tower is never counted). D is training tokens (sequence positions seen).
B is the batch in tokens per optimizer step (sequences x sequence length).

:class:`FitResult` holds a law fitted by :func:`scaling.fit.fit_runs` or MM1's own
(:func:`mm1_law`, numbers from :mod:`mm1model.paper`); it predicts, bounds and saves itself.
Nothing here fits, reads runs or draws.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mm1model import records
from mm1model.config import ConfigError, from_dict, to_dict
from mm1model.paper import MM1_LAW_INTERCEPT, MM1_LAW_SLOPE, MM1_SWEEP_PARAMS

N_CONVENTIONS = ("non_embedding", "total")
# The LR law's regressors (``--features``) and the batch law's (``--batch-features``), by name;
# the values are the coefficient names after the intercept, in design-matrix order.
FEATURES = {"params": ("ln_params",), "params,tokens": ("ln_params", "ln_tokens"),
            "params,batch": ("ln_params", "ln_batch"), "params,tokens,batch": ("ln_params", "ln_tokens", "ln_batch")}
BATCH_FEATURES = {"tokens": ("ln_tokens",), "tokens,params": ("ln_tokens", "ln_params")}
# Published laws a fit can be shown beside (`--reference`).
REFERENCES = ("mm1",)


def check_n_convention(n_convention: str, name: str = "n_convention") -> str:
    """``n_convention`` when it is one of :data:`N_CONVENTIONS`; a ConfigError naming ``name`` otherwise."""
    if n_convention not in N_CONVENTIONS:
        raise ConfigError(f"unknown {name} {n_convention!r}; valid: {', '.join(N_CONVENTIONS)}")
    return n_convention


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` percentile interval of ``values`` (one number per bootstrap draw)."""
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def _t_interval(x: np.ndarray, centre: float, cov: list[list[float]] | None, scale: float | None,
                df_resid: float | None, level: float, new_obs: float | None) -> tuple[float, float] | None:
    """exp of a Student-t interval of a log-linear law at design row ``x``: the line's own
    variance, plus ``scale * new_obs`` for a new observation (``new_obs`` None: the line only)."""
    if cov is None or df_resid is None or df_resid <= 0 or scale is None:
        return None
    from scipy import stats  # scipy takes a second to import; only intervals need it

    var = float(x @ np.array(cov) @ x)
    if new_obs is not None:
        var += scale * new_obs
    half = stats.t.ppf(0.5 + level / 2, df_resid) * math.sqrt(max(var, 0.0))
    return math.exp(centre - half), math.exp(centre + half)


def _log_value(name: str, value: float | None, unit: str) -> float:
    if value is None or not value > 0:
        raise ConfigError(f"this law has a {name} term: give a positive {unit}")
    return math.log(value)


@dataclass
class BatchLaw:
    """Step Law's batch law, ln B* = intercept + ln_tokens ln D (+ ln_params ln N), B* in tokens
    per optimizer step, fitted by :func:`scaling.fit.fit_batch_law` over the same selected rows
    as the LR law (within:FRAC: every kept (lr, batch) point's B; parabola: each cell's B*;
    argmin: each cell's best B), over the cells where the batch was swept.

    ``coefficients``, ``stderr``, ``ci95`` are statsmodels OLS's (``cov``, ``scale``,
    ``df_resid`` give its intervals); ``bootstrap_coefficients`` holds one refit per bootstrap
    draw (draws x terms, in :attr:`terms` order) and ``bootstrap_ci95`` their 95% percentile
    intervals. ``n_rows`` counts the regression rows.
    """

    coefficients: dict[str, float]
    features: str = "tokens"
    stderr: dict[str, float | None] = field(default_factory=dict)
    ci95: dict[str, list[float] | None] = field(default_factory=dict)
    n_rows: int = 0
    r2: float | None = None
    cov: list[list[float]] | None = None
    scale: float | None = None
    df_resid: float | None = None
    bootstrap_coefficients: list[list[float]] = field(default_factory=list)
    bootstrap_ci95: dict[str, list[float]] = field(default_factory=dict)
    note: str | None = None

    def __post_init__(self) -> None:
        if self.features not in BATCH_FEATURES:
            raise ConfigError(f"unknown batch features {self.features!r}; valid: {', '.join(BATCH_FEATURES)}")
        missing = [t for t in self.terms if t not in self.coefficients]
        if missing:
            raise ConfigError(f"batch law coefficients lack {', '.join(missing)}")

    @property
    def terms(self) -> list[str]:
        """Coefficient names in design-matrix order."""
        return ["intercept", *BATCH_FEATURES[self.features]]

    def design(self, tokens: float, params: float | None = None) -> np.ndarray:
        """The design row [1, ln D(, ln N)]."""
        row = [1.0, _log_value("ln_tokens", tokens, "token count D")]
        if "ln_params" in self.terms:
            row.append(_log_value("ln_params", params, "parameter count N"))
        return np.array(row)

    def log_predict(self, tokens: float, params: float | None = None) -> float:
        """Predicted ln B* (B* in tokens per optimizer step) at D = ``tokens`` (and N = ``params``)."""
        return float(self.design(tokens, params) @ np.array([self.coefficients[t] for t in self.terms]))

    def predict(self, tokens: float, params: float | None = None) -> float:
        """Predicted optimal batch in tokens per optimizer step at D = ``tokens`` (and N = ``params``)."""
        return math.exp(self.log_predict(tokens, params))

    def interval(self, tokens: float, params: float | None = None,
                 level: float = 0.95) -> tuple[float, float] | None:
        """Interval of B* (tokens per step) at D (and N): the bootstrap draws' percentile interval
        of the law's B* when there are draws, else statsmodels' prediction interval (a new cell's
        B*: the line's uncertainty plus the scatter about it), else None."""
        x = self.design(tokens, params)
        if len(self.bootstrap_coefficients) >= 2:
            lo, hi = _percentiles(np.array(self.bootstrap_coefficients) @ x, level)
            return math.exp(lo), math.exp(hi)
        return _t_interval(x, self.log_predict(tokens, params), self.cov, self.scale, self.df_resid, level, 1.0)

    def formula(self) -> str:
        """The law as one line, with 95% CIs where known."""
        names = {"ln_tokens": "ln D", "ln_params": "ln N"}
        parts = [f"{_term(self, t)} {names[t]}" for t in self.terms[1:]] + [_term(self, "intercept")]
        return f"B* = exp({' '.join(parts)}) tokens/step"


def _term(law: "FitResult | BatchLaw", name: str) -> str:
    """One coefficient as the formulas show it: value and, where known, its 95% CI."""
    value = law.coefficients[name]
    ci = law.ci95.get(name)
    if ci and ci[0] is not None:
        return f"{value:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]"
    return f"{value:+.4f}"


@dataclass
class FitResult:
    """A fitted LR law with everything needed to predict, bound, tabulate and plot it.

    ``coefficients`` maps ``intercept`` and the terms of ``features`` (``ln_params``, and
    ``ln_tokens`` / ``ln_batch`` where the law has them) to their values; ``cov`` is their
    covariance in :attr:`terms` order, ``scale`` the residual variance of ln lr* and ``df_resid``
    its degrees of freedom (Student-t intervals). ``source`` is "fit" for a law fitted here and
    "mm1" for the paper's law (no uncertainty: intervals are None).

    With a fit-level bootstrap (``bootstrap`` draws), ``bootstrap_coefficients`` holds each
    successful draw's refit (draws x terms), ``bootstrap_failed`` counts the draws whose refit
    failed, ``bootstrap_ci95`` the coefficients' 95% percentile intervals. ``batch_law`` is the
    fitted :class:`BatchLaw` (None when the batch was not swept or could not be fitted: see
    ``warnings``). ``schedule`` and ``seq_len`` are the sweep's where the runs record a single
    value (a law is valid for the schedule it was swept with). ``init``: the towers the sweep's
    runs started from checkpoints (``none`` = all from scratch, ``lm``, ``vit``, ``lm+vit``;
    :attr:`mm1model.train_config.InitConfig.towers`), None where not recorded (a runs table
    without the column; MM1's law, whose paper does not say).
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
    batch_law: BatchLaw | None = None
    bootstrap_coefficients: list[list[float]] = field(default_factory=list)
    bootstrap_failed: int = 0
    bootstrap_ci95: dict[str, list[float]] = field(default_factory=dict)
    schedule: str | None = None
    seq_len: int | None = None
    init: str | None = None
    # lambda / peak LR of every run of the sweep (None: not recorded or not one value); with each
    # optimum's steps it gives the sweep's weight-decay timescale (scaling.recipe.sweep_timescale)
    weight_decay_ratio: float | None = None
    warnings: list[str] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_n_convention(self.n_convention)
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
    def group_kind(self) -> str:
        """What a group of the fit is: "sizes", or "cells" where groups are (N, D) cells (D in the
        law, or the batch swept: :mod:`scaling.optima`), so several share one N."""
        return "cells" if len({o["params"] for o in self.optima}) < self.n_groups else "sizes"

    @property
    def uses_tokens(self) -> bool:
        return "tokens" in self.features

    @property
    def uses_batch(self) -> bool:
        return "batch" in self.features

    def design(self, params: float, tokens: float | None = None, batch: float | None = None) -> np.ndarray:
        """The design row [1, ln N(, ln D)(, ln B)] for N parameters (D tokens, a batch of B
        tokens per optimizer step)."""
        if not params > 0:
            raise ConfigError(f"params must be positive, got {params}")
        row = [1.0, math.log(params)]
        if self.uses_tokens:
            row.append(_log_value("ln_tokens", tokens, "token count"))
        if self.uses_batch:
            row.append(_log_value("ln_batch", batch, "batch in tokens per optimizer step"))
        return np.array(row)

    def log_predict(self, params: float, tokens: float | None = None, batch: float | None = None) -> float:
        """Predicted ln(peak lr) at N = ``params`` (D = ``tokens``, B = ``batch`` tokens per step)."""
        beta = np.array([self.coefficients[t] for t in self.terms])
        return float(self.design(params, tokens, batch) @ beta)

    def predict(self, params: float, tokens: float | None = None, batch: float | None = None) -> float:
        """Predicted peak learning rate at N = ``params`` (D = ``tokens``, B = ``batch`` tokens per step)."""
        return math.exp(self.log_predict(params, tokens, batch))

    def _interval(self, params: float, tokens: float | None, batch: float | None, level: float, new_obs: bool):
        if self.cov is None:  # a law without uncertainty needs no design row (MM1's)
            return None
        x = self.design(params, tokens, batch)
        return _t_interval(x, self.log_predict(params, tokens, batch), self.cov, self.scale, self.df_resid,
                           level, self.pred_var_weight if new_obs else None)

    def prediction_interval(self, params: float, tokens: float | None = None, batch: float | None = None,
                            level: float = 0.95) -> tuple[float, float] | None:
        """Interval (in lr, not ln lr) for the optimum of a new size: coefficient uncertainty plus
        the scatter of optima about the line. None when the law carries no uncertainty."""
        return self._interval(params, tokens, batch, level, new_obs=True)

    def confidence_interval(self, params: float, tokens: float | None = None, batch: float | None = None,
                            level: float = 0.95) -> tuple[float, float] | None:
        """Interval (in lr) for the fitted line itself at N (the confidence band)."""
        return self._interval(params, tokens, batch, level, new_obs=False)

    def bootstrap_interval(self, params: float, tokens: float | None = None, batch: float | None = None,
                           level: float = 0.95) -> tuple[float, float] | None:
        """Percentile interval (in lr) of the law's prediction over the bootstrap draws (each
        draw resampled the runs within every cell, reselected every optimum and refitted): the
        line's uncertainty, Step Law's way. None without at least two draws."""
        if len(self.bootstrap_coefficients) < 2:
            return None
        lo, hi = _percentiles(np.array(self.bootstrap_coefficients) @ self.design(params, tokens, batch), level)
        return math.exp(lo), math.exp(hi)

    def formula(self) -> str:
        """The law as one line, with 95% CIs where known."""
        names = {"ln_params": "ln N", "ln_tokens": "ln D", "ln_batch": "ln B"}
        parts = [f"{_term(self, t)} {names[t]}" for t in self.terms[1:]] + [_term(self, "intercept")]
        return f"lr* = exp({' '.join(parts)})"

    # -- persistence -----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The JSON-ready dict written as fit.json (NaN/inf become null on write)."""
        return to_dict(self)

    def save(self, path: str | Path) -> None:
        """Write fit.json atomically."""
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


def mm1_law(n_convention: str = "non_embedding") -> FitResult:
    """MM1's law, lr* = exp(-0.4214 ln N - 0.5535), as a law with source "mm1".

    At N = 3e9, 7e9, 3e10 it reads 5.83e-5, 4.08e-5, 2.21e-5: the paper's 6e-5, 4e-5, 2e-5. The
    paper does not say whether N counts embeddings; the default here is non-embedding (see
    ../shared/notes/mm1-and-peers.md) and a caller may tag the law with the other convention.
    The paper publishes no intervals, so this law's intervals are None.
    """
    return FitResult(
        coefficients={"intercept": MM1_LAW_INTERCEPT, "ln_params": MM1_LAW_SLOPE},
        n_convention=n_convention,
        features=["params"],
        source="mm1",
        n_groups=len(MM1_SWEEP_PARAMS),
    )
