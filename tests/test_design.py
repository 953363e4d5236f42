"""`scaling design`: simulated sweeps through the real selection and regression, the budget
search, and bad input (a budget below one cell, a prior with another N convention)."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from mm1model.config import ConfigError
from scaling.cli import main
from scaling.design import (CellCosts, Design, NoiseModel, check_prior, estimate_noise, load_prior,
                            measured_cell_seconds, plot_front, search_designs, simulate)
from scaling.fit import read_runs
from scaling.law import mm1_law

DENSE = "tests/data/cpu-dense-runs.csv"


def _costs(k: int) -> CellCosts:
    params = tuple(float(n) for n in np.geomspace(1e7, 1e9, k))
    return CellCosts(sizes=tuple(f"s{i}" for i in range(k)), params=params, flops=(1.0,) * k, cost=(1.0,) * k,
                     unit="cells")


def test_predicted_interval_width_agrees_with_the_spread_of_simulated_fits():
    """Ten sizes (8 residual degrees of freedom): the fits' mean 95% PI width at 30B is within
    20% of the central 95% spread of their actual errors there, and the interval covers ~95%."""
    report = simulate(_costs(10), Design(5, 0.3, 1), mm1_law(), NoiseModel(scatter=0.1, prior_sd=0.0),
                      targets=("30B",), sims=40, seed=1)
    width, spread = report.pi_width[0], report.error_spread[0]
    assert 0.8 < width / spread < 1.2
    assert width == pytest.approx(0.7009, abs=2e-3) and spread == pytest.approx(0.6216, abs=2e-3)
    assert report.coverage[0] == pytest.approx(0.95)
    assert report.inside == [1.0] * 10 and report.failed == 0


def test_a_narrow_grid_misses_optima_and_the_report_says_how_often():
    """A 3-point grid 0.15 decade apart around a prior that is off by sd 1 in ln lr: the
    optimum often lies outside it; MM1's 7 points a third of a decade apart almost always hold it."""
    noise = NoiseModel(prior_sd=1.0)
    narrow = simulate(_costs(4), Design(3, 0.15, 1), mm1_law(), noise, sims=15, seed=0)
    wide = simulate(_costs(4), Design(7, 1 / 3, 1), mm1_law(), noise, sims=15, seed=0)
    assert max(narrow.inside) < 0.6 and min(wide.inside) == 1.0
    assert "optimum inside grid" in wide.summary()


def test_budget_search_keeps_the_front_and_draws_it(tmp_path):
    result = search_designs(_costs(3), budget=20, prior=mm1_law(), sims=3, points=(3, 5, 7), spacings=(0.3,),
                            seeds=(1, 2))
    labels = {r.design.label for r in result.reports}
    assert labels == {"3 LRs x 0.3 dec x 1 seed(s)", "5 LRs x 0.3 dec x 1 seed(s)",
                      "3 LRs x 0.3 dec x 2 seed(s)"}  # 7 x 1 x 3 = 21 and 5 x 2 x 3 = 30 cost more than 20
    assert result.front and all(r.cost <= 20 for r in result.reports)
    cheapest = min(result.reports, key=lambda r: (r.cost, r.width))
    assert cheapest in result.front
    assert plot_front(result, tmp_path / "front.png").stat().st_size > 0


def _one_line(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_bad_input_is_one_line(tmp_path):
    assert _one_line("design", "--config", "sweeps/cpu.toml", "--budget", "1e9", "--out", tmp_path / "d") == (
        "error: --budget 1e+09 FLOPs is below one cell (the cheapest, w32, costs 1.604e+11 FLOPs)")
    assert not (tmp_path / "d").exists()
    total = tmp_path / "fit.json"
    mm1_law("total").save(total)
    assert _one_line("design", "--config", "sweeps/cpu.toml", "--prior", total) == (
        "error: the prior law counts N as 'total' parameters (its n_convention); sweep sizes count 'non_embedding' "
        "ones: refit it with --n-convention non_embedding")
    # a cell is priced as its size's one reference cell: batch or horizon axes are refused, not under-priced
    assert _one_line("design", "--config", "sweeps/cpu-horizons.toml") == (
        "error: scaling design simulates one batch size and one horizon per size (a law in N alone); w32 has 3 "
        "batch size(s) x 3 horizon(s): design a sweep without batch_sizes or horizons axes")
    with pytest.raises(ConfigError, match="at least 3 LRs"):
        Design(2, 0.3, 1)
    assert check_prior(load_prior(None)).source == "mm1"


def test_noise_estimated_from_the_recorded_dense_sweep():
    noise = estimate_noise(read_runs([DENSE]), source=DENSE)
    assert (noise.curvature, noise.asymmetry, noise.seed_sd, noise.scatter) == pytest.approx(
        (0.3630, 0.2693, 0.08728, 0.05243), abs=1e-4)
    assert noise.source == f"estimated from {DENSE}"


def test_cell_seconds_are_each_size_s_fastest_finished_run():
    """The dense table's added cells ran 3-10x slower on a shared machine (w64: 86-300 s against
    the demo cells' 26-29 s): the median would price w32 at 24.5 s and w64 at 28.5 s, the fastest
    run is the cell's own cost."""
    assert measured_cell_seconds(read_runs([DENSE])) == pytest.approx(
        {"w32": 22.521, "w64": 25.641, "w128": 41.225, "w256": 78.925}, abs=1e-3)
