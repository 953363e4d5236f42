"""`scaling.fit` over (lr, batch) cells: Step Law's within rule at any batch, the windowed
parabola on dense noisy grids, the (lr, batch) surface, the fit-level bootstrap, laws in ln N,
ln D, ln B and the batch law.

Every table here is synthetic with a known optimum; numbers pinned below were produced by the
tests themselves with the seeds given (numpy's default_rng).
"""
from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest

from mm1model.config import ConfigError
from mm1model.paper import STEP_LAW_WITHIN
from scaling import plots
from scaling.fit import fit_runs
from scaling.optima import batch_tokens, parabola_window, select_curve
from scaling.law import BatchLaw, FitResult, mm1_law

LN2 = math.log(2)


def three_point_vertex(log_lr: np.ndarray, loss: np.ndarray) -> float:
    """The parabola rule before the window, as it was written: the interpolating parabola
    through the best point and its two neighbours."""
    b = int(np.argmin(loss))
    (x0, x1, x2), (y0, y1, y2) = log_lr[b - 1:b + 2], loss[b - 1:b + 2]
    curvature = ((y2 - y1) / (x2 - x1) - (y1 - y0) / (x1 - x0)) / (x2 - x0)
    slope = (y1 - y0) / (x1 - x0) - curvature * (x0 + x1)
    return -slope / (2 * curvature)


# --------------------------------------------------------------------------- within:FRAC at any batch
def multi_batch_sweep() -> pd.DataFrame:
    """(N, D) cells, each a grid of 4 batches (B*/2 .. 4 B*, in tokens) x 13 LRs a factor sqrt(2)
    apart. True laws: ln lr* = -0.5 ln N - 0.4 ln D + 0.5 ln B + c along the ridge, ln B* =
    0.5 ln D - 2; the loss is flatter in the batch at larger N, so more batches (above B*, with
    larger LRs) come within 0.25% of the best there."""
    rows = []
    for n, flat in ((1e6, 0.004), (1e7, 0.002), (1e8, 0.001)):
        for d in (1e9, 1e10):
            z_star = 0.5 * math.log(d) - 2.0
            for j in range(-1, 3):
                z = round(z_star / LN2) * LN2 + j * LN2
                x_star = 1.0 - 0.5 * math.log(n) + 0.5 * (z - z_star) - 0.3 * (z_star - 9)
                for k in range(-6, 7):
                    x = round(x_star / (LN2 / 2)) * (LN2 / 2) + k * LN2 / 2
                    rows.append({"params": n, "tokens": d, "batch_tokens": math.exp(z), "lr": math.exp(x),
                                 "loss": 2.5 + 0.02 * (x - x_star) ** 2 + flat * (z - z_star) ** 2})
    return pd.DataFrame(rows)


def _kept(runs: pd.DataFrame, best_batch_first: bool) -> pd.DataFrame:
    """numpy/pandas reference of the two rules: every point within 0.25% of its cell's best, or
    (the old rule) the best batch's points only."""
    kept = []
    for _, cell in runs.groupby(["params", "tokens"]):
        if best_batch_first:
            cell = cell[cell["batch_tokens"] == cell.loc[cell["loss"].idxmin(), "batch_tokens"]]
        kept.append(cell[cell["loss"] <= cell["loss"].min() * (1 + STEP_LAW_WITHIN)])
    return pd.concat(kept)


def _lstsq(kept: pd.DataFrame, columns: list[str], y: str = "lr") -> np.ndarray:
    x = np.column_stack([np.ones(len(kept))] + [np.log(kept[c].to_numpy()) for c in columns])
    return np.linalg.lstsq(x, np.log(kept[y].to_numpy()), rcond=None)[0]


def test_within_keeps_every_batch_of_a_cell_as_step_law_does():
    runs = multi_batch_sweep()
    result = fit_runs(runs, select=f"within:{STEP_LAW_WITHIN}", features="params,tokens")
    new, old = _kept(runs, False), _kept(runs, True)
    assert len(result.regression_rows) == len(new) == 65 and len(old) == 20
    assert [len(o["log_lr_selected"]) for o in result.optima] == [9, 8, 11, 13, 12, 12]
    got = [result.coefficients[t] for t in ("intercept", "ln_params", "ln_tokens")]
    np.testing.assert_allclose(got, _lstsq(new, ["params", "tokens"]), atol=1e-10)
    # The two rules give different exponents: at larger N more batches, with larger LRs, enter.
    assert result.coefficients["ln_params"] == pytest.approx(-0.4584, abs=1e-4)
    assert _lstsq(old, ["params", "tokens"])[1] == pytest.approx(-0.5076, abs=1e-4)
    # Rows that span batches identify the batch term: the ridge's -0.5, -0.4, +0.5 come back.
    full = fit_runs(runs, select=f"within:{STEP_LAW_WITHIN}", features="params,tokens,batch")
    np.testing.assert_allclose([full.coefficients[t] for t in full.terms],
                               _lstsq(new, ["params", "tokens", "batch_tokens"]), atol=1e-10)
    assert [round(full.coefficients[t], 4) for t in ("ln_params", "ln_tokens", "ln_batch")] == [-0.4945, -0.4044, 0.4825]
    # The batch law over the same rows: ln B on ln D (Step Law's B = c D^k).
    law = result.batch_law
    assert isinstance(law, BatchLaw) and law.features == "tokens" and law.n_rows == 65
    np.testing.assert_allclose([law.coefficients["intercept"], law.coefficients["ln_tokens"]],
                               _lstsq(new.assign(d=new["tokens"]), ["d"], y="batch_tokens"), atol=1e-10)
    assert law.coefficients["ln_tokens"] == pytest.approx(0.5716, abs=1e-4)
    with_n = fit_runs(runs, select=f"within:{STEP_LAW_WITHIN}", batch_features="tokens,params").batch_law
    assert with_n.terms == ["intercept", "ln_tokens", "ln_params"]
    np.testing.assert_allclose([with_n.coefficients[t] for t in with_n.terms],
                               _lstsq(new.assign(d=new["tokens"]), ["d", "params"], y="batch_tokens"), atol=1e-10)


# --------------------------------------------------------------------------- the parabola's window
def dense_sweep(seed: int, params=np.geomspace(1e7, 1e8, 4), points: int = 150, seeds: int = 2,
                noise: float = 0.01) -> pd.DataFrame:
    """150 LRs over three decades per size, two seeds of Gaussian noise 0.01 nats, on a loss
    quadratic in ln lr but twice as steep above the optimum as below; ln lr* = -0.5 ln N - 1."""
    rng = np.random.default_rng(seed)
    frames = []
    for n in params:
        true = -1.0 - 0.5 * math.log(n)
        x = true + rng.uniform(-0.5, 0.5) + np.linspace(-1.5, 1.5, points) * math.log(10)
        u = x - true
        loss = 3.0 - 0.1 * math.log(n) + np.where(u < 0, 0.03, 0.06) * u ** 2
        for s in range(seeds):
            frames.append(pd.DataFrame({"params": n, "lr": np.exp(x), "seed": s,
                                        "loss": loss + noise * rng.normal(size=points)}))
    return pd.concat(frames, ignore_index=True)


def test_dense_noisy_grid_recovers_the_slope_where_three_points_do_not():
    new, old = [], []
    for seed in range(10):
        runs = dense_sweep(seed)
        new.append(fit_runs(runs).coefficients["ln_params"])
        curves = [g.groupby("lr")["loss"].mean() for _, g in runs.groupby("params")]
        vertices = [three_point_vertex(np.log(c.index.to_numpy()), c.to_numpy()) for c in curves]
        old.append(np.polyfit(np.log(np.geomspace(1e7, 1e8, 4)), vertices, 1)[0])
    new, old = np.array(new), np.array(old)
    np.testing.assert_allclose(new, [-0.5299, -0.5199, -0.5238, -0.4635, -0.5158, -0.5510, -0.5253, -0.4949,
                                     -0.5065, -0.5164], atol=1e-4)
    np.testing.assert_allclose(old, [-0.4325, -0.5972, -0.5866, -0.5563, -0.4649, -0.6153, -0.4559, -0.3917,
                                     -0.5617, -0.2626], atol=1e-4)
    assert np.abs(new + 0.5).max() < 0.052
    assert np.sqrt(np.mean((new + 0.5) ** 2)) == pytest.approx(0.0265, abs=1e-4)
    assert np.sqrt(np.mean((old + 0.5) ** 2)) == pytest.approx(0.1063, abs=1e-4)


def test_a_factor_2_grid_keeps_the_three_point_vertex_and_a_denser_one_widens():
    rng = np.random.default_rng(5)
    x = np.log(1e-3) + LN2 * np.arange(7)
    for _ in range(20):  # any noise: on a factor-2 grid the window is the best and its neighbours
        y = 3.0 + 0.05 * (x - x[3] - rng.uniform(-0.5, 0.5) * LN2) ** 2 + 0.01 * rng.normal(size=7)
        best = int(np.argmin(y))
        if 0 < best < 6:
            assert parabola_window(x, y, best) == (best - 1, best + 1)
            assert select_curve(x, y, "parabola")[0][0] == three_point_vertex(x, y)
    fine = np.log(1e-3) + LN2 / 2 * np.arange(11)  # factor sqrt(2): 2 points either side in the window
    y = 3.0 + 0.05 * (fine - fine[5]) ** 2
    assert parabola_window(fine, y, 5) == (3, 7)
    y[8] = math.inf  # a diverged run ends the window
    assert parabola_window(fine, y, 6) == (4, 7)
    dense = np.log(1e-3) + 0.05 * np.arange(60)
    assert parabola_window(dense, (dense - dense[30]) ** 2, 30) == (15, 45)  # within a factor 2.2 (ln 2.2 = 0.79)


def test_a_swept_batch_is_located_by_the_quadratic_surface():
    # A tilted bowl in (ln lr, ln B), its optimum off the grid: the surface gives it exactly.
    x_star, z_star = math.log(3e-3), math.log(3e5)
    rows = []
    for j in range(-2, 3):
        for k in range(-3, 4):
            x, z = math.log(2e-3) + k * LN2, math.log(2.5e5) + j * LN2
            u, v = x - x_star, z - z_star
            rows.append({"params": 1e7, "tokens": 1e10, "batch_size": math.exp(z) / 1024, "seq_len": 1024,
                         "lr": math.exp(x), "loss": 3 + 0.04 * u * u + 0.03 * u * v + 0.05 * v * v, "steps": 1000})
    table = pd.DataFrame(rows)
    table = pd.concat([table, table.assign(params=1e8, loss=table["loss"] - 0.1)])
    result = fit_runs(table)
    for o in result.optima:
        assert o["log_lr_opt"] == pytest.approx(x_star, abs=1e-9)
        assert o["log_batch_opt"] == pytest.approx(z_star, abs=1e-9)
        assert o["batch_tokens_opt"] == pytest.approx(3e5, rel=1e-9)
        assert o["steps_opt"] == pytest.approx(1e10 / 3e5, rel=1e-9)  # D = steps x B at the optimum
        assert o["steps"] == 1000 and o["batch_tokens"] == pytest.approx(2.5e5) and o["fallback"] is None
        assert o["batch_swept"] and not o["at_batch_edge"] and not o["at_edge"]
    assert result.seq_len == 1024
    # With the best batch at the grid's edge there is no surface: the best batch's LR curve, noted.
    edge = fit_runs(table[table["batch_size"] * 1024 >= 2.5e5 * 0.99])
    assert edge.optima[0]["at_batch_edge"]
    assert edge.optima[0]["fallback"] == ("no (lr, batch) surface: the best batch is at the edge of the batch "
                                          "grid; the best batch's LR curve used")
    assert edge.optima[0]["log_batch_opt"] == pytest.approx(math.log(2.5e5))
    assert any("the best batch is at the edge" in w for w in edge.warnings)


# --------------------------------------------------------------------------- the bootstrap
def nd_batch_sweep(seed: int, seeds: int = 3, noise: float = 0.01) -> pd.DataFrame:
    """3 x 3 (N, D) cells, each 7 LRs x 5 batches a factor 2 apart (offsets drawn per cell),
    ``seeds`` seeds of Gaussian noise: ln lr* = 3 - 0.6 ln N - 0.2 ln D, ln B* = 0.5 ln D."""
    rng = np.random.default_rng(seed)
    i, j, s = (a.ravel() for a in np.meshgrid(np.arange(-3, 4), np.arange(-2, 3), np.arange(seeds), indexing="ij"))
    frames = []
    for n in (1e6, 1e7, 1e8):
        for d in (1e9, 1e10, 1e11):
            xs, zs = 3.0 - 0.6 * math.log(n) - 0.2 * math.log(d), 0.5 * math.log(d)
            x = (round(xs / LN2 + rng.uniform(-0.5, 0.5)) + i) * LN2
            z = (round(zs / LN2 + rng.uniform(-0.5, 0.5)) + j) * LN2
            loss = 3 - 0.1 * math.log(n) + 0.04 * (x - xs) ** 2 + 0.02 * (x - xs) * (z - zs) + 0.03 * (z - zs) ** 2
            frames.append(pd.DataFrame({"params": n, "tokens": d, "lr": np.exp(x), "batch_tokens": np.exp(z),
                                        "loss": loss + noise * rng.normal(size=len(x)), "seed": s}))
    return pd.concat(frames, ignore_index=True)


def test_bootstrap_intervals_of_every_exponent_cover_the_truth():
    covered = {"ln_params": 0, "ln_tokens": 0, "batch ln_tokens": 0}
    for seed in range(40):
        result = fit_runs(nd_batch_sweep(seed), features="params,tokens", bootstrap=200, seed=seed)
        for term, truth in (("ln_params", -0.6), ("ln_tokens", -0.2)):
            lo, hi = result.bootstrap_ci95[term]
            covered[term] += lo <= truth <= hi
        lo, hi = result.batch_law.bootstrap_ci95["ln_tokens"]
        covered["batch ln_tokens"] += lo <= 0.5 <= hi
        assert result.bootstrap_failed == 0 and len(result.bootstrap_coefficients) == 200
    assert covered == {"ln_params": 39, "ln_tokens": 39, "batch ln_tokens": 39}


def test_bootstrap_is_seeded_vectorised_and_consistent():
    # ~10 cells x ~10 points x 2 seeds, 1000 draws: a few seconds at most.
    runs = pd.concat([dense_sweep(0, params=np.geomspace(1e6, 1e8, 10), points=10).assign(tokens=1e9)])
    start = time.perf_counter()
    a = fit_runs(runs, bootstrap=1000, seed=3)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, elapsed
    b = fit_runs(runs, bootstrap=1000, seed=3)
    assert a.bootstrap_coefficients == b.bootstrap_coefficients and len(a.bootstrap_coefficients) == 1000
    draws = np.array(a.bootstrap_coefficients)
    assert a.bootstrap_ci95["ln_params"] == pytest.approx(list(np.percentile(draws[:, 1], [2.5, 97.5])))
    lo, hi = a.bootstrap_interval(3e9)
    expected = np.exp(np.percentile(draws @ [1.0, math.log(3e9)], [2.5, 97.5]))
    assert (lo, hi) == pytest.approx(tuple(expected)) and lo < a.predict(3e9) < hi
    # The per-cell intervals (used by --weighted) come from the same draws.
    assert all(o["lr_ci95"][0] <= o["lr_opt"] <= o["lr_ci95"][1] for o in a.optima)
    assert fit_runs(runs).bootstrap_interval(3e9) is None and mm1_law().bootstrap_interval(3e9) is None


def test_a_draw_that_cannot_be_refitted_is_counted_not_kept():
    # Two sizes, one seed per LR: a draw resamples runs, and a size whose draw sees no finite
    # point (its every resampled run diverged) leaves one cell: that draw fails.
    rows = [{"params": 1e6, "lr": lr, "loss": 3.0 + (math.log(lr) + 6) ** 2 * 0.05} for lr in (1e-3, 2e-3, 4e-3)]
    rows += [{"params": 1e7, "lr": 1e-3, "loss": 2.9}, {"params": 1e7, "lr": 2e-3, "loss": math.nan, "status": "diverged"}]
    result = fit_runs(pd.DataFrame(rows), select="argmin", bootstrap=200, seed=0)
    assert result.bootstrap_failed == 57 and len(result.bootstrap_coefficients) == 143
    assert "bootstrap: 57 of 200 draws could not be refitted and were left out" in result.warnings


# --------------------------------------------------------------------------- laws, batch, files
def test_batch_in_tokens_comes_from_batch_tokens_or_batch_size_times_seq_len():
    frame = pd.DataFrame({"batch_size": [8.0, 16.0], "seq_len": [128.0, 128.0]})
    assert list(batch_tokens(frame)) == [1024.0, 2048.0]
    assert list(batch_tokens(frame.assign(batch_tokens=[4096.0, math.nan]))) == [4096.0, 2048.0]
    assert batch_tokens(frame.drop(columns="seq_len")) is None
    runs = multi_batch_sweep()
    sequences = runs.assign(batch_size=runs["batch_tokens"] / 256).drop(columns="batch_tokens")
    with pytest.raises(ConfigError, match=r"^--features params,batch needs the batch in tokens per optimizer step "
                                          r"\(a batch_tokens column, or batch_size and seq_len\): they have "
                                          r"batch_size but no seq_len$"):
        fit_runs(sequences, features="params,batch")
    # The LR law without a batch term still fits; the batch law (in tokens) is skipped, said why.
    result = fit_runs(sequences, select=f"within:{STEP_LAW_WITHIN}")
    assert result.batch_law is None
    assert ("the batch was swept but the runs record neither batch_tokens nor seq_len: no batch law "
            "(it is in tokens per step)") in result.warnings
    same = fit_runs(sequences.assign(seq_len=256), select=f"within:{STEP_LAW_WITHIN}")
    assert same.batch_law.coefficients == pytest.approx(fit_runs(runs, select=f"within:{STEP_LAW_WITHIN}")
                                                        .batch_law.coefficients, abs=1e-10)
    with pytest.raises(ConfigError, match="unknown --batch-features 'params'; valid: tokens, tokens,params"):
        fit_runs(runs, batch_features="params")


def test_mixed_schedules_are_refused_and_one_is_recorded():
    runs = dense_sweep(0, points=9, seeds=1)
    assert fit_runs(runs).schedule is None and fit_runs(runs).seq_len is None
    assert fit_runs(runs.assign(schedule="wsd")).schedule == "wsd"
    mixed = runs.assign(schedule=np.where(runs["params"] > 3e7, "wsd", "cosine"))
    with pytest.raises(ConfigError, match=r"^runs mix schedules cosine, wsd: a law is valid for the schedule it "
                                          r"was swept with; fit each separately$"):
        fit_runs(mixed)


def test_a_fixed_tokens_per_parameter_design_warns_of_collinear_n_and_d():
    rows = []
    for n, jitter in ((1e6, 1.0), (1e7, 1.1), (1e8, 0.95), (1e9, 1.05)):
        for k in range(-3, 4):
            x = -0.5 * math.log(n) + k * LN2
            rows.append({"params": n, "tokens": 20 * n * jitter, "lr": math.exp(x), "loss": 3 + 0.05 * (k * LN2) ** 2})
    result = fit_runs(pd.DataFrame(rows), features="params,tokens")
    assert ("ln N and ln D are nearly collinear across the 4 cells (corr +1.000): their coefficients are not "
            "separately identified; vary D at fixed N") in result.warnings
    # A batch term fed each cell's B* (parabola), which follows the batch law, is flagged too;
    # within:FRAC's rows span batches and are not.
    batch = fit_runs(nd_batch_sweep(0), features="params,tokens,batch")
    assert [w for w in batch.warnings if w.startswith("ln B")] == [
        "ln B is nearly a linear function of the other regressors over the rows (R = 0.996): its coefficient "
        "is not identified; with parabola or argmin each cell gives one B*, which follows the batch law: use "
        "within:FRAC so each cell's rows span batches"]
    # (its coefficient here: -0.67, 95% CI [-1.15, -0.18], where the ridge has none: ln B* is ln D's echo)
    assert batch.coefficients["ln_batch"] == pytest.approx(-0.6667, abs=1e-4)
    within = fit_runs(multi_batch_sweep(), features="params,tokens,batch", select=f"within:{STEP_LAW_WITHIN}")
    assert not any(w.startswith("ln B") for w in within.warnings)


def test_three_feature_law_predicts_bounds_and_round_trips_through_json(tmp_path):
    runs = multi_batch_sweep()
    result = fit_runs(runs, select=f"within:{STEP_LAW_WITHIN}", features="params,tokens,batch", bootstrap=50, seed=1)
    assert result.terms == ["intercept", "ln_params", "ln_tokens", "ln_batch"]
    assert result.uses_tokens and result.uses_batch and not mm1_law().uses_batch
    c = result.coefficients
    assert result.predict(3e9, 1e11, 4e6) == pytest.approx(
        math.exp(c["intercept"] + c["ln_params"] * math.log(3e9) + c["ln_tokens"] * math.log(1e11)
                 + c["ln_batch"] * math.log(4e6)))
    with pytest.raises(ConfigError, match="this law has a ln_batch term: give a positive batch in tokens per optimizer step"):
        result.predict(3e9, 1e11)
    formula = result.formula()
    assert formula.startswith("lr* = exp(-0.4945 [") and " ln N " in formula and " ln D " in formula and " ln B " in formula
    lo, hi = result.prediction_interval(3e9, 1e11, 4e6)
    assert lo < result.predict(3e9, 1e11, 4e6) < hi
    result.save(tmp_path / "fit.json")
    loaded = FitResult.from_json(tmp_path / "fit.json")
    assert isinstance(loaded.batch_law, BatchLaw)
    assert loaded.batch_law == result.batch_law and loaded.bootstrap_coefficients == result.bootstrap_coefficients
    assert loaded.predict(3e9, 1e11, 4e6) == result.predict(3e9, 1e11, 4e6)
    assert loaded.bootstrap_interval(3e9, 1e11, 4e6) == result.bootstrap_interval(3e9, 1e11, 4e6)
    law = loaded.batch_law
    assert law.predict(1e11) == pytest.approx(math.exp(law.coefficients["intercept"]
                                                       + law.coefficients["ln_tokens"] * math.log(1e11)))
    lo, hi = law.interval(1e11)  # bootstrap draws: their percentile interval
    draws = np.array(law.bootstrap_coefficients) @ [1.0, math.log(1e11)]
    assert (lo, hi) == pytest.approx(tuple(np.exp(np.percentile(draws, [2.5, 97.5]))))
    no_draws = BatchLaw(**{**law.__dict__, "bootstrap_coefficients": [], "bootstrap_ci95": {}})
    lo, hi = no_draws.interval(1e11)  # without: statsmodels' prediction interval
    assert lo < no_draws.predict(1e11) < hi
    assert law.formula().startswith("B* = exp(+0.5716 [") and law.formula().endswith(") tokens/step")
    rows = result.regression_rows
    assert {"steps", "batch_size", "batch_tokens", "log_batch", "log_tokens"} <= set(rows[0])
    # Both figures draw a law with a batch term over (lr, batch) cells, from the file alone.
    drawn = plots.loss_vs_lr(loaded, tmp_path / "loss") + plots.lr_law(loaded, tmp_path / "law")
    assert [p.name for p in drawn] == ["loss.png", "loss.svg", "law.png", "law.svg"]


def test_no_batch_law_when_every_cells_best_batch_is_at_an_edge():
    """Only the batches above B* swept (as at the CPU demo's budget, where B* is a few sequences):
    every cell's best batch is the smallest swept, so a line through them would describe the grid,
    not the optimum (a zero slope with a zero-width interval). The fit says so instead."""
    runs = multi_batch_sweep()
    low = runs.groupby(["params", "tokens"])["batch_tokens"].transform("min")
    above = runs[runs["batch_tokens"] > low * 1.5]  # drop each cell's smallest batch: B* is now its lower edge
    result = fit_runs(above, features="params,tokens")
    assert all(o["at_batch_edge"] for o in result.optima)
    assert result.batch_law is None
    assert any("best batch is at an edge of the swept batches in all 6 cells" in w for w in result.warnings)
