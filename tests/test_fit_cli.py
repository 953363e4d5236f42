"""`scaling fit` end to end on real files: a sweep directory in the trainer's run-directory
layout, runs tables in every format, the MM1 reference, and every kind of bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from mm1model import records
from mm1model.config import ConfigError
from mm1model.counting import param_counts
from mm1model.sizes import get_size
from scaling import lr_table, plots
from scaling.cli import main
from scaling.fit import fit_runs, read_runs
from scaling.law import FitResult
from scaling.report import run_fit

SIZES = ("100K", "300K", "1M", "3M")


def _true_log_lr(n: float) -> float:
    return -0.4 * math.log(n) - 0.3


def make_sweep(root, sizes=SIZES, diverge=True):
    """Run directories (config.json + result.json) for a factor-2 LR grid per size, two seeds."""
    rng = np.random.default_rng(0)
    for size in sizes:
        n = param_counts(get_size(size)).params
        true = _true_log_lr(n)
        centre = round(true / math.log(2)) * math.log(2)
        for k in range(-3, 4):
            lr = math.exp(centre + k * math.log(2))
            for seed in (0, 1):
                run = root / size / f"lr{lr:.4g}-s{seed}"
                status, loss = "ok", 6.0 - 0.3 * math.log(n) + 0.04 * (math.log(lr) - true) ** 2 + 0.005 * rng.normal()
                if diverge and k == 3 and size in ("1M", "3M"):
                    status, loss = "diverged", None
                records.write_json(run / "config.json", {"size": size, "lr": lr, "seed": seed, "batch_size": 8})
                records.write_json(run / "result.json", {"status": status, "final_val_loss": loss, "params": n,
                                                          "lr": lr, "tokens": 1e6, "steps": 100, "wall_s": 2.0})
    return root


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_fit_a_sweep_directory_writes_everything(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    result = invoke("fit", sweep, "--reference", "mm1", "--bootstrap", "30")
    assert result.exit_code == 0, result.output
    out = sweep / "fit"
    names = {"fit.json", "lr_table.md", "lr_table.csv", "lr_table.json",
             "loss_vs_lr.png", "loss_vs_lr.svg", "lr_law.png", "lr_law.svg"}
    assert {p.name for p in out.iterdir()} == names
    assert all((out / n).stat().st_size > 1000 for n in names if n.endswith(("png", "svg")))
    fit = json.loads((out / "fit.json").read_text())
    for key in ("coefficients", "stderr", "ci95", "r2", "n_groups", "optima", "backtest", "targets",
                "n_convention", "features"):
        assert key in fit
    assert fit["n_groups"] == 4 and fit["n_convention"] == "non_embedding" and fit["features"] == ["params"]
    assert set(fit["coefficients"]) == {"intercept", "ln_params"}
    assert fit["coefficients"]["ln_params"] == pytest.approx(-0.4, abs=0.05)
    lo, hi = fit["ci95"]["ln_params"]
    assert lo < -0.4 < hi
    assert [t["name"] for t in fit["targets"]] == ["3B", "7B", "30B"]
    for t in fit["targets"]:
        assert t["peak_lr_pi95"][0] < t["peak_lr"] < t["peak_lr_pi95"][1]
    assert all(o["lr_ci95"] for o in fit["optima"])
    table = pd.read_csv(out / "lr_table.csv")
    assert list(table["target"]) == ["3B", "7B", "30B"]
    assert list(table["z_loss"]) == [0.0, 0.0, 1e-4]
    assert table["min_lr"].to_numpy() == pytest.approx(0.1 * table["peak_lr"].to_numpy())
    assert table["reference_lr"].to_numpy() == pytest.approx([5.88e-5, 4.09e-5, 2.21e-5], rel=0.01)
    assert set(table["total_tokens"]) == {200_000 * 512 * 4096}
    md = (out / "lr_table.md").read_text()
    assert md.startswith("| target | N | peak LR | PI95 low | PI95 high | boot95 low | boot95 high | MM1 LR | min LR |")
    assert "lr* = exp(" in result.output and "MM1 law (paper)" in result.output and str(out) in result.output
    assert FitResult.from_json(out / "fit.json").predict(3e9) == pytest.approx(fit["targets"][0]["peak_lr"], rel=0.02)


def test_reference_alone_reads_the_papers_table(tmp_path):
    result = invoke("fit", "--reference", "mm1", "--out", tmp_path / "ref")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "ref" / "lr_table.json").read_text())
    assert [f"{r['peak_lr']:.0e}" for r in rows] == ["6e-05", "4e-05", "2e-05"]
    assert [r["z_loss"] for r in rows] == [0.0, 0.0, 1e-4]
    assert not (tmp_path / "ref" / "loss_vs_lr.png").exists() and (tmp_path / "ref" / "lr_law.svg").exists()
    fit = json.loads((tmp_path / "ref" / "fit.json").read_text())
    assert fit["source"] == "mm1" and fit["coefficients"] == {"intercept": -0.5535, "ln_params": -0.4214}


def test_runs_tables_in_every_format_give_the_sweep_directorys_fit(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    rows = []
    for path in sorted(sweep.rglob("result.json")):
        res, cfg = records.read_json(path), records.read_json(path.with_name("config.json"))
        rows.append({"size": cfg["size"], "params": res["params"], "lr": res["lr"], "seed": cfg["seed"],
                     "loss": res["final_val_loss"], "status": res["status"], "tokens": res["tokens"]})
    frame = pd.DataFrame(rows)
    frame.to_csv(tmp_path / "runs.csv", index=False)
    frame.to_parquet(tmp_path / "runs.parquet")
    records.write_jsonl(tmp_path / "runs.jsonl", rows)
    expected = fit_runs(read_runs([sweep])).coefficients
    for name in ("runs.csv", "runs.parquet", "runs.jsonl"):
        assert fit_runs(read_runs([tmp_path / name])).coefficients == pytest.approx(expected, abs=1e-12)
    # Several tables at once are one table (here the same runs twice: seed means unchanged).
    both = fit_runs(read_runs([tmp_path / "runs.csv", tmp_path / "runs.jsonl"]))
    assert both.coefficients == pytest.approx(expected, abs=1e-12)


def test_an_all_diverged_group_is_dropped_and_reported(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    for path in (sweep / "3M").rglob("result.json"):
        records.write_json(path, {**records.read_json(path), "status": "diverged", "final_val_loss": None})
    result = invoke("fit", sweep, "--bootstrap", "0")
    assert result.exit_code == 0, result.output
    assert "3M: every run diverged; group dropped" in result.output
    fit = json.loads((sweep / "fit" / "fit.json").read_text())
    assert fit["n_groups"] == 3 and fit["dropped_groups"][0]["size"] == "3M"
    # Figures redraw from the file alone (diverged losses are null there).
    loaded = FitResult.from_json(sweep / "fit" / "fit.json")
    drawn = plots.loss_vs_lr(loaded, tmp_path / "again") + plots.lr_law(loaded, tmp_path / "law")
    assert [p.name for p in drawn] == ["again.png", "again.svg", "law.png", "law.svg"]


def test_two_feature_fit_from_a_table(tmp_path):
    rows = []
    for n in (1e5, 1e6, 1e7):
        for d in (1e7, 1e8, 1e9):
            true = 0.5 - 0.7 * math.log(n) + 0.3 * math.log(d)
            centre = round(true / math.log(2)) * math.log(2)
            for k in range(-3, 4):
                x = centre + k * math.log(2)
                rows.append({"params": n, "tokens": d, "lr": math.exp(x), "loss": 3 + 0.05 * (x - true) ** 2})
    pd.DataFrame(rows).to_csv(tmp_path / "runs.csv", index=False)
    out = tmp_path / "out"
    result = invoke("fit", tmp_path / "runs.csv", "--features", "params,tokens", "--out", out, "--bootstrap", "0",
                    "--targets", "3B")
    assert result.exit_code == 0, result.output
    fit = json.loads((out / "fit.json").read_text())
    assert fit["coefficients"] == pytest.approx({"intercept": 0.5, "ln_params": -0.7, "ln_tokens": 0.3}, abs=1e-9)
    assert fit["n_groups"] == 9 and fit["targets"][0]["tokens"] == 200_000 * 512 * 4096
    assert "+0.3000 [+0.3000, +0.3000] ln D" in result.output


def _table(tmp_path, **columns):
    frame = pd.DataFrame({"params": [1e5] * 3 + [1e6] * 3, "lr": [1e-3, 2e-3, 4e-3] * 2,
                          "loss": [2.1, 2.0, 2.2, 1.8, 1.7, 1.9], **columns})
    path = tmp_path / "runs.csv"
    frame.to_csv(path, index=False)
    return path


def _bad(tmp_path, *args):
    out = tmp_path / "out"
    result = invoke("fit", *args, "--out", out)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert not out.exists() and not list(tmp_path.glob(".out.*"))  # nothing left behind
    return lines[0]


def test_bad_inputs_one_line_each_nothing_written(tmp_path):
    good = _table(tmp_path)
    frame = pd.read_csv(good)
    frame.drop(columns="loss").to_csv(tmp_path / "noloss.csv", index=False)
    assert _bad(tmp_path, tmp_path / "noloss.csv") == (
        f"error: {tmp_path / 'noloss.csv'} lacks column(s) loss; required: params, lr, loss "
        "(optional: size, tokens, batch_size, seq_len, batch_tokens, schedule, seed, status, steps, wall_s, path, "
        "parametrization, init)")
    frame.assign(lr=[1e-3, 0.0, 4e-3] * 2).to_csv(tmp_path / "zero.csv", index=False)
    assert _bad(tmp_path, tmp_path / "zero.csv") == f"error: {tmp_path / 'zero.csv'}: lr must be positive, got 0 (row 2)"
    frame.assign(params=[-1e5] * 3 + [1e6] * 3).to_csv(tmp_path / "neg.csv", index=False)
    assert "params must be positive, got -100000 (row 1)" in _bad(tmp_path, tmp_path / "neg.csv")
    frame[frame["params"] == 1e5].to_csv(tmp_path / "one.csv", index=False)
    assert _bad(tmp_path, tmp_path / "one.csv") == "error: need at least 2 groups with a finite optimum, got 1"
    # an empty loss is a diverged run only where the status says so (an ok run has a loss)
    frame.assign(loss=[2.1, 2.0, 2.2] + [None] * 3, status=["ok"] * 3 + ["diverged"] * 3).to_csv(
        tmp_path / "div.csv", index=False)
    assert _bad(tmp_path, tmp_path / "div.csv") == (
        "error: need at least 2 groups with a finite optimum, got 1 (1 dropped: every run diverged)")
    assert "unknown --select 'best'" in _bad(tmp_path, good, "--select", "best")
    assert "--features params,tokens needs a tokens column" in _bad(tmp_path, good, "--features", "params,tokens")
    assert "unknown size" in _bad(tmp_path, good, "--targets", "3B,31B").lower()
    assert "no such file or directory" in _bad(tmp_path, tmp_path / "missing.csv")
    (tmp_path / "empty").mkdir()
    assert "no runs under" in _bad(tmp_path, tmp_path / "empty")
    assert "no input" in _bad(tmp_path)
    frame.assign(parametrization=["sp"] * 3 + ["mup(base=w32)"] * 3).to_csv(tmp_path / "mixed.csv", index=False)
    assert _bad(tmp_path, tmp_path / "mixed.csv") == (
        "error: the runs mix parametrizations (mup(base=w32), sp): one law per parametrization; "
        "fit them one at a time (`scaling compare` sets them side by side)")
    assert "unknown runs table format runs.txt" in _bad(tmp_path, good.rename(tmp_path / "runs.txt"))


def test_an_error_keeps_an_earlier_output_intact(tmp_path):
    good = _table(tmp_path)
    out = tmp_path / "out"
    assert invoke("fit", good, "--out", out, "--bootstrap", "0").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert invoke("fit", good, "--out", out, "--select", "within:-1").exit_code == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(tmp_path.glob(".out.*"))
    # A later reference-only fit into the same place leaves no figure of the earlier data behind.
    assert invoke("fit", "--reference", "mm1", "--out", out).exit_code == 0
    assert "loss_vs_lr.png" in before and not (out / "loss_vs_lr.png").exists()


def test_total_convention_recounts_n_and_is_recorded(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", diverge=False)
    result = invoke("fit", sweep, "--n-convention", "total", "--bootstrap", "0", "--targets", "3B")
    assert result.exit_code == 0, result.output
    fit = json.loads((sweep / "fit" / "fit.json").read_text())
    assert fit["n_convention"] == "total"
    assert [o["params"] for o in fit["optima"]] == [param_counts(get_size(s)).params_lm_total for s in SIZES]
    assert fit["targets"][0]["params"] == param_counts(get_size("3B")).params_lm_total


def test_each_target_is_predicted_once_and_shown_alike_everywhere(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    report = run_fit([sweep], reference="mm1", bootstrap=0, targets="3B,3e10")
    assert report.out == sweep / "fit"
    fit = json.loads((report.out / "fit.json").read_text())
    table = json.loads((report.out / "lr_table.json").read_text())
    for p, target, row in zip(report.predictions, fit["targets"], table):
        assert target["peak_lr"] == row["peak_lr"] == p.recipe.peak_lr
        assert target["reference_lr"] == row["reference_lr"] == p.reference_lr
    assert [t["name"] for t in fit["targets"]] == [r["target"] for r in table] == ["3B", "3e+10"]
    # `scaling fit` and `scaling summary` print the one rendering of the peak-LR table
    shown = lr_table.peak_lr_table(report.table)
    assert shown in report.summary()
    summary = invoke("summary", sweep)
    assert summary.exit_code == 0, summary.output
    assert shown in summary.output and "MM1's -0.4214 is" in summary.output
    (report.out / "lr_table.json").unlink()
    assert f"error: no lr_table.json in {report.out}" in invoke("summary", sweep).output


def test_trainer_run_directories_mixing_parametrizations_are_refused(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    for path in (sweep / "3M").rglob("config.json"):
        records.write_json(path, {**records.read_json(path), "model": {"parametrization": "mup", "base_size": "w32"}})
    with pytest.raises(ConfigError, match=r"^the runs mix parametrizations \(mup\(base=w32\), sp\)"):
        fit_runs(read_runs([sweep]))


# ------------------------------------------------------------------------ strict numbers
def _sweep_table(tmp_path, name="runs.csv"):
    """A good runs table: the fit of make_sweep's directory, as `scaling collect` would write it."""
    frame = read_runs([make_sweep(tmp_path / "sweep")])[["size", "params", "tokens", "lr", "seed", "loss", "status"]]
    frame = frame.assign(loss=frame["loss"].where(frame["status"] == "ok"))  # diverged: empty, as written
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path, pd.read_csv(path, dtype=str, keep_default_na=False)


def test_a_typo_in_a_number_refuses_the_table_naming_row_and_column(tmp_path):
    path, text = _sweep_table(tmp_path)
    good = invoke("fit", path, "--out", tmp_path / "fit", "--bootstrap", "0")
    assert good.exit_code == 0, good.output
    # the typo: a letter O for a zero. It was read as diverged and moved the law.
    for column, value, row in [("loss", "6.98O", 7), ("lr", "1e-3x", 2), ("params", "97,600", 3), ("tokens", "lots", 1)]:
        bad = text.copy()
        bad.loc[row - 1, column] = value
        bad.to_csv(tmp_path / "typo.csv", index=False)
        assert _bad(tmp_path, tmp_path / "typo.csv") == f"error: {tmp_path / 'typo.csv'} row {row}: {column} {value!r} is not a number"
    # on a row whose status says there is no result, the loss may be empty or NaN, not a typo
    diverged = int(np.flatnonzero(text["status"].to_numpy() == "diverged")[0])
    for value, refused in [("", False), ("nan", False), ("NaN", False), ("x", True)]:
        bad = text.copy()
        bad.loc[diverged, "loss"] = value
        bad.to_csv(tmp_path / "div.csv", index=False)
        result = invoke("fit", tmp_path / "div.csv", "--out", tmp_path / "fit2", "--bootstrap", "0")
        assert (result.exit_code == 2) == refused, result.output
    # an ok row needs its loss; so does a row without a status (ok by default)
    bad = text.copy()
    bad.loc[0, "loss"] = ""
    bad.to_csv(tmp_path / "noloss.csv", index=False)
    assert _bad(tmp_path, tmp_path / "noloss.csv") == (
        f"error: {tmp_path / 'noloss.csv'} row 1: loss is empty on a row with status 'ok': an ok run has a loss "
        "(a run without one says diverged or failed in the status column)")
    bad.drop(columns="status").to_csv(tmp_path / "nostatus.csv", index=False)
    assert "row 1: loss is empty on a row with status 'ok'" in _bad(tmp_path, tmp_path / "nostatus.csv")
    # failed rows carry no result: empty numbers are fine there, and the rows are left out
    failed = text.copy()
    failed.loc[0, ["loss", "lr", "params", "tokens", "status"]] = ["", "", "", "", "failed"]
    failed.to_csv(tmp_path / "failed.csv", index=False)
    runs = read_runs([tmp_path / "failed.csv"])
    assert len(runs) == len(text) - 1 and runs["loss"].dtype == float


def test_diverged_rows_still_rank_as_inf_and_the_fit_is_unchanged(tmp_path):
    path, text = _sweep_table(tmp_path)
    runs = read_runs([path])
    assert (runs.loc[runs["status"] == "diverged", "loss"] == math.inf).all()
    assert runs["loss"][runs["status"] == "ok"].map(math.isfinite).all()
    # the same numbers from the sweep directory and from its table give the same law
    table = fit_runs(runs, select="argmin").coefficients
    assert table == pytest.approx(fit_runs(read_runs([tmp_path / "sweep"]), select="argmin").coefficients, abs=1e-12)
    # argmin on make_sweep's factor-2 grid (its truth: -0.4 ln N - 0.3)
    assert table == pytest.approx({"intercept": -0.80880, "ln_params": -0.35825}, abs=1e-5)


def test_clean_runs_of_an_in_memory_frame_keeps_nan_as_diverged():
    """A notebook's frame without statuses may mark a diverged run by a NaN loss (test_fit pins it);
    a string that is not a number is refused there too."""
    from scaling.fit import clean_runs

    frame = pd.DataFrame({"params": [1e5, 1e5], "lr": [1e-3, 2e-3], "loss": [2.0, math.nan]})
    assert clean_runs(frame)["loss"].tolist() == [2.0, math.inf]
    with pytest.raises(ConfigError, match=r"^runs table row 2: loss 'abc' is not a number$"):
        clean_runs(frame.assign(loss=[2.0, "abc"]))
    with pytest.raises(ConfigError, match="row 2: loss is empty"):
        clean_runs(frame, strict=True)
