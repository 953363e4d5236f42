"""`scaling.fit`: recovery of known laws from synthetic sweeps, selection, intervals, backtest.

Synthetic sweeps look like real ones: for each size a log-spaced LR grid (factor 2 unless said)
centred on the power of 2 nearest the true optimum, and a loss quadratic in ln lr around the
true ln lr* = slope ln N + intercept, plus Gaussian noise.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from mm1model.config import ConfigError
from mm1model.paper import MM1_LAW_INTERCEPT as MM1_INTERCEPT
from mm1model.paper import MM1_LAW_SLOPE as MM1_LN_PARAMS
from mm1model.paper import MM1_SWEEP_PARAMS
from scaling.fit import fit_line, fit_runs
from scaling.optima import select_curve
from scaling.law import FitResult, mm1_law
from scaling.report import with_targets

LN2 = math.log(2)


def synth(params, slope=MM1_LN_PARAMS, intercept=MM1_INTERCEPT, step=LN2, points=7, noise=0.0,
          seeds=1, seed=0, curvature=0.05, tokens=None, ln_tokens=0.0, shift=0.0):
    """A runs table; ``tokens`` (a list) crosses every N with every D (Step Law's grid);
    ``shift`` offsets every grid from the nearest power of 2 (in units of ``step``)."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in params:
        for d in tokens or [None]:
            true = intercept + slope * math.log(n) + (ln_tokens * math.log(d) if d else 0.0)
            centre = round(true / step) * step + shift * step
            for k in range(points):
                x = centre + (k - points // 2) * step
                for s in range(seeds):
                    loss = 3.0 - 0.1 * math.log(n) + curvature * (x - true) ** 2 + noise * rng.normal()
                    rows.append({"params": n, "tokens": d or 1e9, "lr": math.exp(x), "loss": loss,
                                 "seed": s, "status": "ok"})
    return pd.DataFrame(rows)


def test_noiseless_mm1_sweep_recovers_the_paper_law_and_table():
    result = fit_runs(synth(MM1_SWEEP_PARAMS))
    assert round(result.coefficients["ln_params"], 4) == -0.4214
    assert round(result.coefficients["intercept"], 4) == -0.5535
    assert result.n_groups == 4 and result.r2 == pytest.approx(1.0)
    result = with_targets(result, ["3B", "7B", "30B"])
    assert [f"{t['peak_lr']:.0e}" for t in result.targets] == ["6e-05", "4e-05", "2e-05"]
    # The paper's own rounding: N = 3e9, 7e9, 3e10 give 5.83e-5, 4.08e-5, 2.21e-5.
    assert [round(result.predict(n), 7) for n in (3e9, 7e9, 3e10)] == [5.83e-5, 4.08e-5, 2.21e-5]
    assert result.backtest["mean_abs_error_log_lr"] < 1e-9


def test_reference_law_table():
    law = with_targets(mm1_law(), ["3B", "7B", "30B"])
    assert [f"{t['peak_lr']:.0e}" for t in law.targets] == ["6e-05", "4e-05", "2e-05"]
    assert law.targets[2]["peak_lr"] == pytest.approx(2.2e-5, rel=0.02)
    assert law.targets[0]["peak_lr_pi95"] is None and law.prediction_interval(3e9) is None
    assert law.formula() == "lr* = exp(-0.4214 ln N -0.5535)"


def test_ci95_of_the_slope_covers_the_truth_in_at_least_90_of_100_seeds():
    params = np.geomspace(1e5, 1e8, 6)
    covered, width = 0, []
    for seed in range(100):
        result = fit_runs(synth(params, slope=-0.35, intercept=-2.0, noise=0.004, seed=seed))
        lo, hi = result.ci95["ln_params"]
        covered += lo <= -0.35 <= hi
        width.append(hi - lo)
    assert covered >= 90, covered
    assert covered <= 99  # an interval that always covers would be too wide to be useful
    assert 0.01 < np.median(width) < 0.2


def test_parabola_beats_argmin_on_a_coarse_grid():
    # Factor-4 grid, optima off the grid by varying amounts: argmin is off by up to ln 4 / 2.
    params = np.geomspace(1e5, 1e8, 5)
    errors = {"parabola": [], "argmin": []}
    for seed in range(20):
        runs = synth(params, slope=-0.4, intercept=-1.5, step=math.log(4), noise=0.002, seed=seed)
        truth = -1.5 - 0.4 * np.log(params)
        for select in errors:
            fitted = np.array([o["log_lr_opt"] for o in fit_runs(runs, select=select).optima])
            errors[select].append(np.abs(fitted - truth).mean())
    parabola, argmin = np.mean(errors["parabola"]), np.mean(errors["argmin"])
    assert parabola < 0.5 * argmin, (parabola, argmin)
    # argmin is off by exactly the distance from the truth to its nearest grid point.
    truth = -1.5 - 0.4 * np.log(params)
    nearest = np.round(truth / math.log(4)) * math.log(4)
    assert argmin == pytest.approx(np.abs(truth - nearest).mean(), abs=1e-12)
    assert argmin == pytest.approx(0.3883, abs=1e-4)


def _seed_means(runs):
    return runs.groupby(["params", "tokens", "lr"])["loss"].mean().reset_index()


def test_within_selection_equals_numpy_least_squares_on_the_same_rows():
    runs = synth(np.geomspace(1e5, 1e8, 5), slope=-0.4, intercept=-1.5, noise=0.003, seeds=2,
                 curvature=0.02, seed=3)
    result = fit_runs(runs, select="within:0.005")
    y, X = [], []
    for (n, _), group in _seed_means(runs).groupby(["params", "tokens"]):
        keep = group[group["loss"] <= group["loss"].min() * 1.005]
        y += list(np.log(keep["lr"]))
        X += [[1.0, math.log(n)]] * len(keep)
    assert len(y) > 5 + 3  # more than one row per group enters
    beta = np.linalg.lstsq(np.array(X), np.array(y), rcond=None)[0]
    assert len(result.regression_rows) == len(y)
    assert result.coefficients["intercept"] == pytest.approx(beta[0], abs=1e-10)
    assert result.coefficients["ln_params"] == pytest.approx(beta[1], abs=1e-10)


def test_two_feature_fit_equals_numpy_least_squares_and_recovers_step_law_exponents():
    runs = synth([1e6, 1e7, 1e8], slope=-0.7, intercept=0.5, tokens=[1e8, 1e9, 1e10], ln_tokens=0.3,
                 noise=0.002, seed=1)
    result = fit_runs(runs, select="argmin", features="params,tokens")
    means = _seed_means(runs)
    best = means.loc[means.groupby(["params", "tokens"])["loss"].idxmin()]
    X = np.column_stack([np.ones(len(best)), np.log(best["params"]), np.log(best["tokens"])])
    beta = np.linalg.lstsq(X, np.log(best["lr"].to_numpy()), rcond=None)[0]
    got = [result.coefficients[k] for k in ("intercept", "ln_params", "ln_tokens")]
    np.testing.assert_allclose(got, beta, atol=1e-10)
    noiseless = fit_runs(synth([1e6, 1e7, 1e8], slope=-0.7, intercept=0.5, tokens=[1e8, 1e9, 1e10],
                               ln_tokens=0.3), features="params,tokens")
    assert noiseless.coefficients["ln_params"] == pytest.approx(-0.7, abs=1e-9)
    assert noiseless.coefficients["ln_tokens"] == pytest.approx(0.3, abs=1e-9)
    assert noiseless.n_groups == 9
    with pytest.raises(ConfigError, match="ln_tokens term"):
        noiseless.predict(3e9)


def test_prediction_interval_equals_statsmodels_obs_ci():
    runs = synth(np.geomspace(1e5, 1e8, 6), slope=-0.35, intercept=-2.0, noise=0.004, seed=7)
    result = fit_runs(runs)
    x = np.log([o["params"] for o in result.optima])
    y = np.array([o["log_lr_opt"] for o in result.optima])
    ols = sm.OLS(y, sm.add_constant(x)).fit()
    frame = ols.get_prediction(np.array([[1.0, math.log(3e9)]])).summary_frame(alpha=0.05)
    lo, hi = result.prediction_interval(3e9)
    assert math.log(lo) == pytest.approx(frame["obs_ci_lower"].iloc[0], abs=1e-10)
    assert math.log(hi) == pytest.approx(frame["obs_ci_upper"].iloc[0], abs=1e-10)
    clo, chi = result.confidence_interval(3e9)
    assert math.log(clo) == pytest.approx(frame["mean_ci_lower"].iloc[0], abs=1e-10)
    assert result.stderr["ln_params"] == pytest.approx(ols.bse[1], rel=1e-12)
    assert result.r2 == pytest.approx(ols.rsquared, rel=1e-12)


def test_backtest_is_leave_one_group_out():
    runs = synth(np.geomspace(1e5, 1e8, 5), slope=-0.35, intercept=-2.0, noise=0.004, seed=2)
    result = fit_runs(runs)
    x = np.log([o["params"] for o in result.optima])
    y = np.array([o["log_lr_opt"] for o in result.optima])
    for i, row in enumerate(result.backtest["rows"]):
        keep = np.arange(len(x)) != i
        slope, intercept = np.polyfit(x[keep], y[keep], 1)
        assert row["error_log_lr"] == pytest.approx(slope * x[i] + intercept - y[i], abs=1e-10)
        assert row["ratio"] == pytest.approx(math.exp(row["error_log_lr"]))


def test_bootstrap_is_seeded_and_weighted_fit_equals_numpy_wls():
    runs = synth(np.geomspace(1e5, 1e8, 5), slope=-0.35, intercept=-2.0, noise=0.004, seeds=3, seed=4)
    a = fit_runs(runs, bootstrap=40, seed=1, weighted=True)
    b = fit_runs(runs, bootstrap=40, seed=1, weighted=True)
    assert [o["lr_ci95"] for o in a.optima] == [o["lr_ci95"] for o in b.optima]
    for o in a.optima:
        assert o["lr_ci95"][0] <= o["lr_ci95"][1] and o["var_log_lr"] >= 0
    w = np.array([r["weight"] for r in a.regression_rows])
    X = np.column_stack([np.ones(len(w)), [r["log_params"] for r in a.regression_rows]])
    y = np.array([r["log_lr"] for r in a.regression_rows])
    beta = np.linalg.lstsq(X * np.sqrt(w)[:, None], y * np.sqrt(w), rcond=None)[0]
    assert a.coefficients["ln_params"] == pytest.approx(beta[1], abs=1e-10)
    assert a.weighted and a.pred_var_weight == pytest.approx(np.mean(1 / w))


def test_diverged_ranks_worse_and_all_diverged_group_is_dropped():
    runs = synth([1e5, 1e6, 1e7], slope=-0.35, intercept=-2.0)
    # The lowest 'loss' at 1e5 is on a diverged run (NaN loss, or status diverged with a number).
    first = runs.index[runs["params"] == 1e5]
    runs.loc[first[3], "status"] = "diverged"
    runs.loc[runs["params"] == 1e7, "loss"] = np.nan
    result = fit_runs(runs, select="argmin")
    assert result.n_groups == 2
    assert result.dropped_groups == [{"size": "N=1e+07", "params": 1e7, "n_runs": 7, "reason": "all runs diverged"}]
    assert any("every run diverged" in w for w in result.warnings)
    assert result.optima[0]["lr_best"] != pytest.approx(runs.loc[first[3], "lr"])
    assert result.optima[0]["points"][3]["loss"] == math.inf


def test_parabola_falls_back_to_argmin_with_a_warning():
    x = np.log([1e-3, 2e-3, 4e-3])
    chosen, note = select_curve(x, np.array([1.0, 1.1, 1.2]), "parabola")
    assert chosen[0] == x[0] and note == "argmin used: best point at the grid edge"
    chosen, note = select_curve(x, np.array([1.1, 1.0, math.inf]), "parabola")
    assert chosen[0] == x[1] and "diverged" in note
    chosen, note = select_curve(x, np.array([1.1, 1.0, 1.1]), "parabola")
    assert chosen[0] == pytest.approx(x[1]) and note is None
    runs = synth([1e5, 1e6, 1e7], slope=-0.35, intercept=-2.0, shift=3)  # truth at the low edge
    result = fit_runs(runs)
    assert all(o["fallback"] and o["at_edge"] for o in result.optima)
    assert len([w for w in result.warnings if "grid edge" in w]) == 3


@pytest.mark.parametrize("kwargs, message", [
    ({"select": "best"}, "unknown --select 'best'; valid: parabola, argmin, within:FRAC"),
    ({"select": "within:x"}, "non-negative fraction"),
    ({"features": "tokens"}, "unknown --features 'tokens'"),
    ({"weighted": True}, "--weighted needs the bootstrap"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("+", r"\+")):
        fit_runs(synth([1e5, 1e6]), **kwargs)


def test_fewer_than_two_groups_is_an_error():
    with pytest.raises(ConfigError, match="need at least 2 groups with a finite optimum, got 1"):
        fit_runs(synth([1e5]))


def test_fit_result_round_trips_through_json(tmp_path):
    result = with_targets(fit_runs(synth(np.geomspace(1e5, 1e8, 4), noise=0.003), bootstrap=10), ["3B", "3e10"])
    result.save(tmp_path / "fit.json")
    loaded = FitResult.from_json(tmp_path / "fit.json")
    assert loaded.coefficients == result.coefficients and loaded.targets == result.targets
    assert loaded.prediction_interval(3e9) == pytest.approx(result.prediction_interval(3e9))
    assert loaded.n_convention == "non_embedding" and loaded.features == ["params"]
    with pytest.raises(ConfigError, match="unknown key"):
        FitResult.from_json({**result.to_json(), "slope": 1})
    with pytest.raises(ConfigError, match="no fit file"):
        FitResult.from_json(tmp_path / "missing.json")


def test_swept_batch_size_picks_the_best_batch_and_fits_a_batch_law():
    rows = []
    for n, d, best_batch in ((1e5, 1e7, 8), (1e6, 1e8, 16), (1e7, 1e9, 32)):
        true = -2.0 - 0.35 * math.log(n)
        centre = round(true / LN2) * LN2
        for batch in (8, 16, 32):
            for k in range(-3, 4):
                x = centre + k * LN2
                loss = 3.0 + 0.05 * (x - true) ** 2 + 0.1 * (math.log(batch / best_batch)) ** 2
                rows.append({"params": n, "tokens": d, "batch_size": batch, "seq_len": 128, "lr": math.exp(x),
                             "loss": loss})
    result = fit_runs(pd.DataFrame(rows))
    assert [o["batch_size"] for o in result.optima] == [8, 16, 32]
    assert result.coefficients["ln_params"] == pytest.approx(-0.35, abs=1e-9)
    # batch* = 8, 16, 32 sequences of 128 tokens at D = 1e7, 1e8, 1e9: exponent log10(2).
    assert result.batch_law.coefficients["ln_tokens"] == pytest.approx(math.log10(2), abs=1e-12)
    assert fit_runs(synth([1e5, 1e6])).batch_law is None


def test_fit_line_is_the_least_squares_line_of_every_caller():
    x = np.log([32.0, 64.0, 128.0, 256.0])
    y = np.array([0.1, 0.35, 0.4, 0.8])
    line = fit_line(x, y)
    slope, intercept = np.polyfit(x, y, 1)
    assert line.slope == pytest.approx(slope, abs=1e-12) and line.intercept == pytest.approx(intercept, abs=1e-12)
    assert line.at(math.log(512.0)) == pytest.approx(intercept + slope * math.log(512.0), abs=1e-12)
    lo, hi = line.slope_ci95
    assert lo < slope < hi
    assert all(math.isnan(v) for v in fit_line(x[:2], y[:2]).slope_ci95)  # no degree of freedom left
