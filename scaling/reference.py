"""MM1's published learning-rate law as a :class:`scaling.fit.FitResult`.

McKinzie et al. (2024), Sec. "Model Scaling": a grid search of the peak LR at 9M, 85M, 302M and
1.2B parameters, then linear regression in log space gives

    eta(N) = exp(-0.4214 ln N - 0.5535)        (natural logs, N = LLM parameters)

which at N = 3e9, 7e9, 3e10 reads 5.83e-5, 4.08e-5, 2.21e-5: the paper's 6e-5, 4e-5, 2e-5.
The paper does not say whether N counts embeddings; the default here is non-embedding (see
../shared/notes/mm1-and-peers.md) and a caller may tag the law with the other convention.
The paper publishes no intervals, so this law's intervals are None.
"""
from __future__ import annotations

from mm1model.paper import MM1_LAW_INTERCEPT as MM1_INTERCEPT, MM1_LAW_SLOPE as MM1_LN_PARAMS, mm1_peak_lr
from scaling.fit import FitResult

MM1_SWEEP_PARAMS = (9e6, 85e6, 302e6, 1.2e9)  # the sizes the paper swept
# The paper's table of predicted peak LRs (Appendix B), one significant figure.
MM1_TABLE = {"3B": 6e-5, "7B": 4e-5, "30B": 2e-5}


def mm1_law(n_convention: str = "non_embedding") -> FitResult:
    """MM1's law, eta = exp(-0.4214 ln N - 0.5535), as a fit object with source "mm1"."""
    return FitResult(
        coefficients={"intercept": MM1_INTERCEPT, "ln_params": MM1_LN_PARAMS},
        n_convention=n_convention,
        features=["params"],
        source="mm1",
        n_groups=len(MM1_SWEEP_PARAMS),
    )


def mm1_lr(params: float) -> float:
    """MM1's predicted peak LR at N = ``params``."""
    return mm1_peak_lr(params)
