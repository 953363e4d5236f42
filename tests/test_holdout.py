"""The held-out horizon test (scaling.holdout) on a synthetic sweep whose optimum follows a known
(N, D) law, so both predictions' errors are known in advance."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mm1model.config import ConfigError
from scaling.holdout import holdout

SIZES = {"s1": 1e6, "s2": 4e6, "s3": 1.6e7, "s4": 6.4e7}
HORIZONS = (1e8, 2e8, 4e8)


def lr_star(n: float, d: float) -> float:
    return math.exp(2.0 - 0.5 * math.log(n) - 0.3 * math.log(d))


def sweep(noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """7 LRs a factor 2 apart around each cell's optimum (off-centre by 0.3 octave so no grid
    point sits on it); loss quadratic in ln lr, 0.05 nats per ln-unit squared."""
    rng = np.random.default_rng(seed)
    rows = []
    for size, n in SIZES.items():
        for d in HORIZONS:
            centre = lr_star(n, d) * 2 ** 0.3
            for k in range(-3, 4):
                lr = centre * 2.0 ** k
                loss = 3.0 + 0.05 * math.log(lr / lr_star(n, d)) ** 2 + noise * rng.standard_normal()
                rows.append({"size": size, "params": n, "tokens": d, "lr": lr, "loss": loss, "batch_size": 8})
    return pd.DataFrame(rows)


def test_the_nd_law_wins_when_the_optimum_moves_with_the_horizon():
    result = holdout(sweep())
    assert (result.size, result.tokens) == ("s4", 4e8)
    # the parabola through three points of an exact quadratic finds the optimum exactly
    assert result.observed_lr == pytest.approx(lr_star(6.4e7, 4e8), rel=1e-9)
    nd, n_only = result.predictions
    assert nd.error_octaves == pytest.approx(0.0, abs=1e-9)
    # the short-horizon law misses the horizon term: 4x the tokens at D^-0.3 is 0.6 octave too high
    assert n_only.error_octaves == pytest.approx(0.3 * math.log2(4), abs=1e-9)
    # regret, by hand: grid points sit at ln(lr/lr*) = (k + 0.3) ln 2, loss 0.05 x that squared;
    # the best grid point (k = 0) has 0.00216 nats. N-only: ln ratio 0.416, 30% of the way from
    # k = 0 to k = 1 in log2: 0.00216 + 0.3 (0.04059 - 0.00216) - 0.00216 = 0.01153.
    # N,D: at lr*, 70% of the way from k = -1 (0.01177) to k = 0: 0.00504 - 0.00216 = 0.00288.
    assert n_only.regret_nats == pytest.approx(0.01153, abs=1e-5)
    assert nd.regret_nats == pytest.approx(0.00288, abs=1e-5)
    assert result.winner == "N,D law"
    assert "nearer the observed optimum: N,D law" in result.summary()


def test_the_holdout_needs_two_horizons_at_the_largest_size():
    runs = sweep()
    with pytest.raises(ConfigError, match="two or more horizons"):
        holdout(runs[runs["tokens"] == 1e8])
