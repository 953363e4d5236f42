"""`scaling compare` on sweep directories written in the sweep's own layout (sweep.json, one
cell.json + result.json per run) with a known loss surface per parametrization:

loss(lr, x) = L(x) + 0.02 (log2 lr - log2 lr*(x))^2 + seed noise, on a factor-2 LR grid
2^-12 .. 2^-4, two seeds. SP over width: lr*(d) = 2^-6 (d / 32)^-1; muP over width:
lr*(d) = 2^-7 at every width, best loss 0.05 worse at d = 256; CompleteP over depth:
lr* = 2^-8 at every depth.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from mm1model import records
from mm1model.config import ConfigError
from mm1model.counting import param_counts
from mm1model.sizes import get_size
from scaling.cells import cell_name
from scaling.cli import main
from scaling.compare import compare, load_runs, single_parametrization
from scaling.runs import Parametrization

WIDTHS = {"w32": 32, "w64": 64, "w128": 128, "w256": 256}
DEPTHS = {"d2": 2, "d4": 4, "d8": 8}
GRID = [2.0 ** k for k in range(-12, -3)]


def make_sweep(root, sizes: dict[str, int], log2_lr_star, best_loss, model: dict, noise: float = 0.002,
               dead: tuple[str, ...] = ()):
    """A settled sweep directory; sizes in ``dead`` have only diverged runs."""
    rng = np.random.default_rng(len(str(root)))
    meta = {"sizes": {}}
    for size, x in sizes.items():
        params = param_counts(get_size(size)).params
        meta["sizes"][size] = {"params": params, "tokens": 1000, "batch_size": 8}
        for lr in GRID:
            for seed in (0, 1):
                cell = root / size / cell_name(lr, seed)
                train = {"size": size, "lr": lr, "seed": seed, "batch_size": 8, "model": model}
                records.write_json(cell / "cell.json", {"size": size, "lr": lr, "seed": seed, "train": train})
                loss = best_loss(x) + 0.02 * (math.log2(lr) - log2_lr_star(x)) ** 2 + noise * rng.normal()
                status = "diverged" if size in dead else "ok"
                records.write_json(cell / "result.json", {
                    "status": status, "final_val_loss": loss if status == "ok" else None, "params": params,
                    "tokens": 1000, "steps": 10, "wall_s": 1.0})
    records.write_json(root / "sweep.json", meta)
    return root


def sp_width(root, **kw):
    return make_sweep(root, WIDTHS, lambda d: -6 - math.log2(d / 32), lambda d: 3.0 - 0.1 * math.log2(d), {}, **kw)


def mup_width(root, **kw):
    return make_sweep(root, WIDTHS, lambda d: -7.0, lambda d: 3.0 - 0.1 * math.log2(d) + (0.05 if d == 256 else 0),
                      {"parametrization": "mup", "base_size": "w32"}, **kw)


def cp_depth(root, **kw):
    return make_sweep(root, DEPTHS, lambda n: -8.0, lambda n: 3.0 - 0.05 * math.log2(n),
                      {"parametrization": "completep", "base_size": "d2"}, **kw)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweeps")
    return [sp_width(root / "sp"), mup_width(root / "mup"), cp_depth(root / "cp")]


def test_slopes_holdouts_and_penalty(sweeps):
    result = compare(sweeps, select="argmin")
    slopes = {(s.label, s.family): s for s in result.slopes}
    # lr* sits on the grid points here, so each slope is exact with the argmin
    assert slopes["sp", "width"].slope == pytest.approx(-1.0, abs=1e-9)
    assert slopes["mup", "width"].slope == pytest.approx(0.0, abs=1e-9)
    assert slopes["completep", "depth"].slope == pytest.approx(0.0, abs=1e-9)
    assert slopes["sp", "width"].n_sizes == 4 and slopes["completep", "depth"].n_sizes == 3
    h = {(x.label, x.method): x for x in result.holdouts}
    # SP: the law from w32..w128 predicts w256 exactly; reusing w32's LR is 3 octaves too high,
    # regret 0.02 x 3^2 = 0.18 nats (+ noise)
    assert h["sp", "fitted law"].error_octaves == pytest.approx(0.0, abs=1e-9)
    assert h["sp", "fitted law"].regret == pytest.approx(0.0, abs=1e-12)
    assert h["sp", "base LR reused"].error_octaves == pytest.approx(3.0)
    assert h["sp", "base LR reused"].regret == pytest.approx(0.18, abs=0.01)
    assert h["sp", "base LR reused"].within_spread is False
    # muP and CompleteP: both roads land on lr*
    for label in ("mup", "completep"):
        for method in ("fitted law", "base LR reused"):
            assert h[label, method].error_octaves == pytest.approx(0.0, abs=1e-9)
            assert h[label, method].regret == pytest.approx(0.0, abs=1e-12)
    pen = {(p["label"], p["family"]): p for p in result.penalties}
    assert pen["mup", "width"]["penalty"] == pytest.approx(0.05, abs=0.01) and pen["sp", "width"]["penalty"] == 0
    assert pen["completep", "depth"]["penalty"] == 0 and pen["completep", "depth"]["size"] == "d8"


def test_parabola_finds_optima_between_grid_points(sweeps, tmp_path):
    # noiseless quadratic curves whose lr* lies half an octave off the grid: the parabola's
    # vertex recovers it exactly, the best grid point is half an octave out
    star = {32: -6.5, 64: -7.0, 128: -7.5, 256: -8.0}
    sweep = make_sweep(tmp_path / "s", WIDTHS, star.get, lambda d: 3.0, {}, noise=0.0)
    parabola = {o.size: o for o in compare([sweep]).optima}
    assert [math.log2(parabola[s].lr_star) for s in WIDTHS] == pytest.approx([-6.5, -7.0, -7.5, -8.0])
    assert all(o.note is None for o in parabola.values())
    [slope] = compare([sweep]).slopes
    assert slope.slope == pytest.approx(-0.5) and slope.ci95[1] - slope.ci95[0] == pytest.approx(0.0, abs=1e-9)
    argmin = {o.size: math.log2(o.lr_star) for o in compare([sweep], select="argmin").optima}
    assert abs(argmin["w32"] + 6.5) == pytest.approx(0.5)
    # on the noisy fixtures the parabola lands within a tenth of an octave of the truth
    slopes = {(s.label, s.family): s.slope for s in compare(sweeps).slopes}
    assert slopes["sp", "width"] == pytest.approx(-1.0, abs=0.1) and slopes["mup", "width"] == pytest.approx(0.0, abs=0.1)
    with pytest.raises(ConfigError, match="^unknown select 'mean'; valid: parabola, argmin$"):
        compare([sweep], select="mean")


def test_regret_is_read_off_the_curve_between_grid_points(tmp_path):
    # log2 lr* = -6, -6, -7 at d = 32, 64, 128: the law (slope -1/2 in log2-log2) predicts
    # log2 lr = -6 1/3 - 1 = -7 1/3 at d = 256, whose lr* is 2^-8. Its curve is 0 at -8 and
    # 0.02 at -7: linear in log2 LR, the regret is 0.02 x 2/3.
    star = {32: -6.0, 64: -6.0, 128: -7.0, 256: -8.0}
    sweep = make_sweep(tmp_path / "s", WIDTHS, star.get, lambda d: 3.0, {}, noise=0.0)
    h = {x.method: x for x in compare([sweep]).holdouts}["fitted law"]
    assert math.log2(h.predicted_lr) == pytest.approx(-7 - 1 / 3)
    assert h.error_octaves == pytest.approx(2 / 3)
    assert h.regret == pytest.approx(0.02 * 2 / 3)
    assert math.isnan(h.seed_spread) is False and h.seed_spread == 0.0


def test_cli_prints_table_and_writes_figures(sweeps, tmp_path):
    out = tmp_path / "cmp"
    result = CliRunner().invoke(main, ["compare", *map(str, sweeps), "--out", str(out), "--select", "argmin"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("slope of ln lr* vs ln x")
    assert any(l.split()[:4] == ["sp", "width", "4", "-1.000"] for l in lines)
    assert any(l.split()[:5] == ["sp", "width", "w256", "base", "LR"] and l.split()[-3] == "+3.00" for l in lines)
    record = json.loads((out / "compare.json").read_text())
    assert {"optima", "slopes", "holdouts", "penalties"} <= set(record)
    assert all((out / n).stat().st_size > 10_000 for n in ("lr_star.png", "regret.png"))


def test_held_out_size_without_a_loss_curve(tmp_path):
    sweep = sp_width(tmp_path / "sp", dead=("w256",))
    result = CliRunner().invoke(main, ["compare", str(sweep), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: held-out size w256 (sp, width family) has no loss curve: 18 settled run(s), none ok"]
    assert not (tmp_path / "out").exists()


def test_mixed_base_sizes_and_parametrizations(tmp_path):
    a = mup_width(tmp_path / "a")
    b = make_sweep(tmp_path / "b", {"w64": 64, "w128": 128}, lambda d: -7.0, lambda d: 3.0,
                   {"parametrization": "mup", "base_size": "w64"})
    result = CliRunner().invoke(main, ["compare", str(a), str(b)])
    assert result.exit_code == 2
    assert result.output.strip() == "error: the mup runs mix base sizes w32, w64: fit one base at a time"
    runs = load_runs([a, sp_width(tmp_path / "sp")])
    with pytest.raises(ConfigError, match="^the runs mix parametrizations mup, sp: fit one at a time"):
        single_parametrization(runs)
    assert single_parametrization(runs[runs["label"] == "sp"]) == "sp"


def test_a_family_at_two_fixed_depths_is_refused(tmp_path):
    cpu = sp_width(tmp_path / "cpu")
    gpu = make_sweep(tmp_path / "gpu", {"gw256": 256, "gw512": 512}, lambda d: -9.0, lambda d: 3.0, {}, noise=0.0)
    result = CliRunner().invoke(main, ["compare", str(cpu), str(gpu)])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: the sp runs of the width family mix depths 2, 12 (e.g. the CPU and "
                                     "GPU families): compare one family at a time")
    [slope] = compare([gpu]).slopes  # either family alone is fine
    assert slope.n_sizes == 2 and slope.slope == pytest.approx(0.0, abs=1e-9)


def test_base_larger_than_target_in_a_sweep(tmp_path):
    sweep = make_sweep(tmp_path / "s", {"w32": 32, "w64": 64}, lambda d: -7.0, lambda d: 3.0,
                       {"parametrization": "mup", "base_size": "w128"})
    result = CliRunner().invoke(main, ["compare", str(sweep)])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: base size w128 (d_model 128, 2 layers) is larger than the target "
                                     "w32 (d_model 32, 2 layers)")


def test_not_a_sweep_directory(tmp_path):
    result = CliRunner().invoke(main, ["compare", str(tmp_path)])
    assert result.exit_code == 2 and "is not a sweep directory (no sweep.json)" in result.output


def test_one_parametrization_name_per_run():
    cp = Parametrization.of({"parametrization": "completep", "base_size": "d2", "alpha": 0.5})
    assert (cp.label, cp.kind) == ("completep(base=d2, alpha=0.5)", "completep_a0.5")
    mup = Parametrization.of({"parametrization": "mup", "base_size": "w32"})
    assert (mup.label, mup.kind) == ("mup(base=w32)", "mup")
    assert Parametrization.of({}).label == Parametrization.of({}).kind == "sp"
