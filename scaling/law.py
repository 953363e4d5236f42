"""The peak-LR law as a results object, its fit.json, and MM1's published law.

The law is MM1's form (McKinzie et al. 2024, Sec. "Model Scaling"):

    ln(lr*) = intercept + ln_params * ln(N)                      (features "params")
    ln(lr*) = intercept + ln_params * ln(N) + ln_tokens * ln(D)  (features "params,tokens"; Step Law)

Natural logarithms throughout. N is the language model's parameter count under ``n_convention``
("non_embedding", the default, as Kaplan et al. and Step Law count; or "total", the LM with its
embeddings; the vision tower is never counted). D is training tokens (sequence positions seen).

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
FEATURES = {"params": ("ln_params",), "params,tokens": ("ln_params", "ln_tokens")}
# Published laws a fit can be shown beside (`--reference`).
REFERENCES = ("mm1",)


def check_n_convention(n_convention: str, name: str = "n_convention") -> str:
    """``n_convention`` when it is one of :data:`N_CONVENTIONS`; a ConfigError naming ``name`` otherwise."""
    if n_convention not in N_CONVENTIONS:
        raise ConfigError(f"unknown {name} {n_convention!r}; valid: {', '.join(N_CONVENTIONS)}")
    return n_convention


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
        from scipy import stats  # scipy takes a second to import; only intervals need it

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
