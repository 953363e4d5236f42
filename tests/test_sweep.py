"""`scaling sweep` / `status` / `collect` on this machine: grids, bad input, resume, kill -9.

Every trainer run here is real (size 100K, a dozen steps of 2 x 64 tokens, 1 thread).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from mm1model import records
from mm1model.config import ConfigError
from mm1model.tokens import CORPUS_VOCAB_SIZE
from scaling import cells
from scaling.cli import main
from scaling.runs import RUN_COLUMNS, collect_runs, rank_key, sweep_status
from mm1model.paper import mm1_peak_lr as mm1_lr
from scaling.sweep import prepare_sweep_dir, run_sweep
from scaling.sweep_plan import SweepConfig, load_sweep_config, plan_sweep, sweep_arms

ROOT = Path(__file__).resolve().parents[1]


def tiny_train(corpus: str, **extra) -> dict:
    return {"batch_size": 2, "data": {"seq_len": 64, "corpus": corpus}, "eval_interval": 0,
            "eval_sequences": 4, "checkpoint_interval": 4, "log_interval": 1000, **extra}


def write_toml(path: Path, corpus: str, lrs: list[float], steps: int = 12, **top) -> Path:
    lines = ['sizes = ["100K"]', f"lrs = {json.dumps(lrs)}", f"steps = {steps}", "max_extend = 0"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in top.items()]
    lines += ["[train]", "batch_size = 2", "eval_interval = 0", "eval_sequences = 4",
              "checkpoint_interval = 4", "log_interval = 1000",
              "[train.data]", "seq_len = 64", f"corpus = {json.dumps(corpus)}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def starts(cell: Path) -> list[dict]:
    """Trainer starts, from the trainer's own event log."""
    return [e for e in records.read_jsonl(cell / "events.jsonl") if e["event"] == "start"]


# ------------------------------------------------------------------------------------ grid
def test_default_grid_is_centred_on_mm1_law():
    assert mm1_lr(3e9) == pytest.approx(5.83e-5, rel=2e-3)
    assert mm1_lr(7e9) == pytest.approx(4.08e-5, rel=2e-3)
    # planned for a cluster: on this machine the memory check refuses these sizes at MM1's shape
    plan = plan_sweep(load_sweep_config(None, sizes=("9M", "1.2B"), points=5, span=1.0, executor="slurm"))
    for sp in plan.sizes:
        assert len(sp.lrs) == 5
        assert sp.lrs[2] == pytest.approx(mm1_lr(sp.params), rel=5e-3)
        assert sp.lrs[-1] / sp.lrs[0] == pytest.approx(100, rel=1e-2)
        assert all(b / a == pytest.approx(10 ** 0.5, rel=1e-2) for a, b in zip(sp.lrs, sp.lrs[1:]))
    assert plan.sizes[0].lrs[2] == 6.73e-4  # N(9M) -> eta, kept to 3 significant digits


def test_shipped_sweep_files_plan():
    cpu = plan_sweep(load_sweep_config(ROOT / "sweeps" / "cpu.toml"))
    assert [s.size for s in cpu.sizes] == ["w32", "w64", "w128", "w256"]
    assert cpu.train["threads"] == 1 and cpu.max_parallel <= os.cpu_count()
    assert cpu.n_cells == 40 and cpu.sizes[0].lrs == (1.97e-3, 3.92e-3, 7.83e-3, 1.56e-2, 3.12e-2)
    mm1 = plan_sweep(load_sweep_config(ROOT / "sweeps" / "mm1.toml", executor="slurm"))
    assert [s.size for s in mm1.sizes] == ["9M", "85M", "302M", "1.2B"]
    assert mm1.n_cells == 28 and mm1.sizes[0].tokens == 5000 * 512 * 4096
    # a GPU cell packs data in cpus_per_task - 1 loader workers; a CPU cell in its own process
    assert mm1.train["data"]["num_workers"] == 7 and cpu.train["data"]["num_workers"] == 0
    transfer = ROOT / "sweeps" / "transfer.toml"
    assert sweep_arms(transfer) == ("sp-width", "mup-width", "sp-depth", "completep-depth")
    arms = {arm: plan_sweep(load_sweep_config(transfer, arm=arm, out="/tmp/x"))
            for arm in (*sweep_arms(transfer), "depthmup-depth")}
    assert {a: p.n_cells for a, p in arms.items()} == {"sp-width": 64, "mup-width": 64, "sp-depth": 48,
                                                       "completep-depth": 48, "depthmup-depth": 48}
    assert str(arms["mup-width"].out) == "/tmp/x/mup-width"
    assert arms["mup-width"].train["model"] == {"parametrization": "mup", "base_size": "w32"}
    assert arms["depthmup-depth"].train["model"]["alpha"] == 0.5 and arms["sp-depth"].train["model"] == {}
    assert arms["sp-width"].train["steps"] == 100 and arms["completep-depth"].train["data"]["seq_len"] == 128
    gpu = ROOT / "sweeps" / "transfer-gpu.toml"
    plans = {arm: plan_sweep(load_sweep_config(gpu, arm=arm)) for arm in (*sweep_arms(gpu), "depthmup-depth")}
    assert {a: p.n_cells for a, p in plans.items()} == {"sp-width": 64, "mup-width": 64, "sp-depth": 64,
                                                        "completep-depth": 64, "depthmup-depth": 64}
    assert [s.size for s in plans["mup-width"].sizes] == ["gw256", "gw512", "gw1024", "gw2048"]
    assert plans["completep-depth"].train["model"] == {"parametrization": "completep", "base_size": "gd6", "alpha": 1.0}
    assert all(p.config.executor == "slurm" and p.config.slurm.gpus_per_node == 8 for p in plans.values())
    assert plans["sp-width"].sizes[-1].flops == pytest.approx(2.32e18, rel=1e-2)
    # one node-day of 8 GPUs at 989 TFLOP/s and 40% MFU holds the four default arms
    total = sum(c.flops for arm in sweep_arms(gpu) for c in plans[arm].sizes for _ in range(len(c.lrs) * c.seeds))
    assert total == pytest.approx(2.64e20, rel=1e-2) and total < 8 * 989e12 * 0.4 * 86400


def test_dry_run_lists_cells_and_resources_and_submits_nothing(tmp_path):
    out = tmp_path / "dry"
    res = CliRunner().invoke(main, ["sweep", "--sizes", "9M,85M,302M,1.2B", "--dry-run", "--executor",
                                    "slurm", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "28 cells" in res.output
    assert "resources per job: 1 node(s) x 1 task(s)" in res.output
    assert res.output.count("  cell ") == 28
    assert "cell 9M/lr=6.73e-04_seed=0" in res.output and "cell 1.2B/lr=8.49e-05_seed=0" in res.output
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--sizes", "100K,7Q"], "7Q"),
    (["--sizes", "100K", "--lrs", "1e-3,0"], "positive"),
    (["--sizes", "100K", "--lrs", "-1e-3"], "positive"),
    (["--sizes", "100K", "--lrs", ","], "empty grid"),
    (["--sizes", "100K", "--points", "0"], "empty grid"),
    (["--sizes", "100K", "--config", "BAD_TOML"], "malformed TOML"),
    (["--sizes", "100K", "--config", "UNKNOWN_KEY"], "valid keys"),
    (["--sizes", "100K", "--executor", "slurm"], "--executor slurm"),
    (["--sizes", "100K", "--max-parallel", "64"], "cores"),
])
def test_bad_input_one_line_nonzero_nothing_written(tmp_path, monkeypatch, args, message):
    bad = tmp_path / "bad.toml"
    bad.write_text('sizes = ["100K"\nsteps = 3\n')
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('sizes = ["100K"]\nstepz = 3\n')
    args = [{"BAD_TOML": str(bad), "UNKNOWN_KEY": str(unknown)}.get(a, a) for a in args]
    monkeypatch.setenv("PATH", "/nonexistent")  # no sbatch: the slurm executor must refuse
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["sweep", *args, "--steps", "3", "--out", str(out)])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.output
    assert not out.exists()


# ------------------------------------------------------------------------------------ running
def test_debug_sweep_divergence_status_collect(tmp_path, corpus):
    out = tmp_path / "sw"
    config = SweepConfig(sizes=("100K",), lrs=(3e-3, 30.0), steps=12, executor="debug", max_extend=0,
                         out=str(out), train=tiny_train(corpus))
    result = run_sweep(config, progress=False, echo=lambda _: None)
    [size] = result.status
    assert (size.ok, size.diverged, size.failed, size.total) == (1, 1, 0, 2)
    assert size.best_lr == 3e-3
    runs = collect_runs(out)
    assert list(runs.columns) == list(RUN_COLUMNS)
    ok, div = runs.set_index("lr").loc[3e-3], runs.set_index("lr").loc[30.0]
    # it learned: below the loss of a uniform guess over the vocabulary
    assert ok.status == "ok" and math.isfinite(ok.loss) and ok.loss < math.log(CORPUS_VOCAB_SIZE)
    assert div.status == "diverged" and math.isnan(div.loss)
    assert rank_key("diverged", None) > rank_key("ok", ok.loss)
    assert ok.params == 97_600 and ok.tokens == 12 * 2 * 64 and ok.batch_size == 2 and ok.steps == 12
    assert set(runs["parametrization"]) == {"sp"}
    # the CLI views: status counts and a CSV that reads back to the same table
    res = CliRunner().invoke(main, ["status", str(out)])
    assert res.exit_code == 0 and "100K     1    0    0    1    0     2   3.00e-03" in res.output
    res = CliRunner().invoke(main, ["collect", str(out), "--out", str(tmp_path / "runs.csv")])
    assert res.exit_code == 0, res.output
    back = pd.read_csv(tmp_path / "runs.csv")
    assert back.loss.iloc[0] == pytest.approx(runs.loss.iloc[0], rel=1e-12) and back.status.tolist() == ["ok", "diverged"]
    CliRunner().invoke(main, ["collect", str(out), "--out", str(tmp_path / "runs.parquet")])
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "runs.parquet"), runs, check_dtype=False)
    # a rerun finds every cell final and starts nothing
    run_sweep(config, progress=False, echo=lambda _: None)
    assert [len(starts(p)) for p in sorted(out.glob("100K/*"))] == [1, 1]


def test_edge_extension_adds_points_until_limit(tmp_path, corpus):
    said: list[str] = []
    out = tmp_path / "edge"
    config = SweepConfig(sizes=("100K",), lrs=(1e-4, 3e-4), steps=12, executor="debug", max_extend=1,
                         out=str(out), train=tiny_train(corpus))
    result = run_sweep(config, progress=False, echo=said.append)
    meta = records.read_json(out / "sweep.json")
    assert meta["sizes"]["100K"]["extended"] == [9e-4]
    assert [e["lr"] for e in result.extensions] == [9e-4]
    assert any("upper edge" in s and "adding lr 9.00e-04" in s for s in said), said
    assert any("after 1 extension(s)" in s for s in said), said  # at the limit it says so
    assert sorted(collect_runs(out).lr) == [1e-4, 3e-4, 9e-4]


def test_failed_cell_is_retried_and_recorded(tmp_path, corpus):
    out = tmp_path / "fail"
    config = SweepConfig(sizes=("100K",), lrs=(3e-3,), steps=8, executor="debug", max_extend=0,
                         max_retries=1, out=str(out), train=tiny_train(corpus))
    plan = plan_sweep(config)
    prepare_sweep_dir(plan)
    [cell] = out.glob("100K/*")
    spec = records.read_json(cell / "cell.json")
    spec["train"]["data"]["corpus"] = str(tmp_path / "no-such-corpus")  # a real failure in the trainer
    records.write_json(cell / "cell.json", spec)
    result = run_sweep(plan, progress=False, echo=lambda _: None)
    assert result.gave_up == [cell]
    attempts = cells.read_attempts(cell)
    assert [a["outcome"] for a in attempts] == ["failed", "failed"]
    assert "no-such-corpus" in attempts[0]["error"]
    # the last line of the trainer's traceback, as error.log holds it
    assert attempts[-1]["error"] == (cell / "error.log").read_text().strip().splitlines()[-1]
    assert sweep_status(out)[0].failed == 1
    assert collect_runs(out).status.tolist() == ["failed"]


def test_stale_lock_is_taken_over_and_live_one_is_not(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    import socket

    records.write_json(tmp_path / "lock", {"host": socket.gethostname(), "pid": int(dead)})
    assert cells.lock_owner(tmp_path) is None
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    assert cells.try_lock(tmp_path, me)
    assert cells.lock_owner(tmp_path)["pid"] == os.getpid()
    assert not cells.try_lock(tmp_path, {**me, "pid": 1})
    cells.release_lock(tmp_path)
    assert not (tmp_path / "lock").exists()


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill9_of_sweep_loses_nothing_and_runs_each_cell_once(tmp_path, corpus):
    toml = write_toml(tmp_path / "k.toml", corpus, [1e-3, 2e-3, 4e-3, 8e-3], steps=30)
    out = tmp_path / "k"
    cmd = [sys.executable, "-c", "from scaling.cli import main; main()"]
    args = ["sweep", "--config", str(toml), "--executor", "local", "--max-parallel", "2", "--out", str(out)]
    proc = subprocess.Popen(cmd + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def result() -> list[Path]:
        return list(out.glob("100K/*/result.json"))

    def locks() -> list[Path]:
        return list(out.glob("100K/*/lock"))

    # what was running is read before the kill: on a loaded machine the running cell can finish
    # between this look and the kill, which leaves nothing locked after it
    seen: dict[str, int] = {}

    def one_done_one_running() -> bool:
        seen["running"] = len(locks())
        return len(result()) >= 1 and seen["running"] >= 1

    wait_for(one_done_one_running, 120, "one finished cell and one running")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(result()) < 4 and seen["running"] >= 1
    rerun = subprocess.run(cmd + args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    cells_ = sorted(out.glob("100K/*"))
    assert len(cells_) == 4
    for cell in cells_:
        assert read_status(cell) == "ok"
        assert len(starts(cell)) == 1, cell  # exactly one trainer start: nothing repeated
        assert len(cells.read_attempts(cell)) == 1
    assert len(collect_runs(out)) == 4


def read_status(cell: Path) -> str:
    return records.read_json(cell / "result.json")["status"]


def test_interrupted_cell_resumes_from_checkpoint(tmp_path, corpus):
    """kill -9 of the whole sweep (jobs too): the rerun resumes the cell from its checkpoint."""
    toml = write_toml(tmp_path / "r.toml", corpus, [3e-3], steps=60)
    out = tmp_path / "r"
    cmd = [sys.executable, "-c", "from scaling.cli import main; main()", "sweep", "--config", str(toml),
           "--executor", "local", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    cell = out / "100K" / "lr=3.00e-03_seed=0"

    def checkpointed() -> bool:
        return any(e["event"] == "checkpoint" and e["step"] >= 8 for e in records.read_jsonl(cell / "events.jsonl"))

    wait_for(checkpointed, 120, "a checkpoint")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cell / "result.json").exists()
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    first, second = starts(cell)
    assert first["step"] == 0 and second["resumed"] and second["step"] >= 8
    attempts = cells.read_attempts(cell)
    assert [a["outcome"] for a in attempts] == [None, "ok"] and attempts[1]["resumed"]
    # the resumed run equals an uninterrupted one bit for bit (CPU, 1 thread, same seed)
    ref = tmp_path / "ref"
    run_sweep(SweepConfig(sizes=("100K",), lrs=(3e-3,), steps=60, executor="debug", max_extend=0,
                          out=str(ref), train=tiny_train(corpus)), progress=False, echo=lambda _: None)
    assert collect_runs(out).loss.iloc[0] == collect_runs(ref).loss.iloc[0]


def test_config_error_for_two_budgets():
    with pytest.raises(ConfigError, match="steps or tokens"):
        plan_sweep(SweepConfig(sizes=("100K",), steps=3, tokens=100))


def test_no_wait_returns_the_dir_at_once_and_finishes_in_background(tmp_path, corpus):
    out = tmp_path / "nw"
    toml = write_toml(tmp_path / "nw.toml", corpus, [3e-3], steps=8)
    cmd = [sys.executable, "-c", "from scaling.cli import main; main()", "sweep", "--config", str(toml),
           "--executor", "debug", "--out", str(out), "--no-wait"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == str(out)
    # it returned before the cell could finish: the background driver is still importing torch
    assert not (out / "100K" / "lr=3.00e-03_seed=0" / "result.json").exists()
    wait_for(lambda: (out / "100K" / "lr=3.00e-03_seed=0" / "result.json").exists()
              and not (out / "lock").exists(), 120, "the background sweep")
    assert collect_runs(out).status.tolist() == ["ok"]
    assert "[1/1] 100K lr=3.00e-03 seed=0: ok" in (out / "sweep.log").read_text()


def test_flags_override_the_sweep_file(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text('sizes = ["100K", "300K"]\nsteps = 7\n[lrs_by_size]\n"100K" = [1e-3, 2e-3]\n')
    base = plan_sweep(load_sweep_config(toml))
    assert base.sizes[0].lrs == (1e-3, 2e-3) and len(base.sizes[1].lrs) == 7 and base.train["steps"] == 7
    assert base.train["optimizer"]["warmup_steps"] == 1 and base.train["optimizer"]["decay_steps"] == 7  # 10% of 7 steps, rounded
    flagged = plan_sweep(load_sweep_config(toml, lrs=(5e-3,), tokens=10_000, sizes=("100K",)))
    assert [s.lrs for s in flagged.sizes] == [(5e-3,)]
    # tokens -> steps: ceil(10000 / (8 sequences x 128 tokens)), the CPU sizes' default shape
    assert flagged.train["steps"] == 10
    assert plan_sweep(load_sweep_config(toml, points=3, span=0.5)).sizes[0].lrs == (1.44e-3, 4.54e-3, 1.44e-2)


def test_parametrization_flags_reach_every_cell_and_are_checked_before_any_job(tmp_path):
    args = ["sweep", "--sizes", "w32,w64", "--lrs", "1e-3", "--steps", "3", "--parametrization", "mup"]
    res = CliRunner().invoke(main, [*args, "--dry-run"])
    assert res.exit_code == 2 and "base_size" in res.output, res.output  # mup needs a base size
    plan = plan_sweep(load_sweep_config(None, sizes=("w32", "w64"), lrs=(1e-3,), steps=3,
                                        model={"parametrization": "mup", "base_size": "w32", "alpha": None}))
    assert plan.train["model"] == {"parametrization": "mup", "base_size": "w32"}


def test_runs_table_labels_each_runs_parametrization():
    from scaling.runs import parametrization_label

    assert parametrization_label({}) == "sp"
    assert parametrization_label({"parametrization": "mup", "base_size": "w32"}) == "mup(base=w32)"
    assert parametrization_label({"parametrization": "completep", "base_size": "d2", "alpha": 0.5}) == \
        "completep(base=d2, alpha=0.5)"
    assert parametrization_label({"parametrization": "completep", "base_size": "d2"}) == "completep(base=d2, alpha=1)"


def test_seeds_by_size_adds_seeds_where_asked_and_a_rerun_keeps_them(tmp_path, corpus):
    toml = tmp_path / "s.toml"
    toml.write_text('sizes = ["100K", "300K"]\nlrs = [1e-3, 2e-3]\nseeds = 1\nsteps = 3\n[seeds_by_size]\n"300K" = 3\n')
    plan = plan_sweep(load_sweep_config(toml))
    assert [(s.size, s.seeds) for s in plan.sizes] == [("100K", 1), ("300K", 3)] and plan.n_cells == 2 + 6
    for text, message in [('"7Q" = 2', "seeds_by_size names sizes not in the sweep: 7Q"),
                          ('"300K" = 0', "seeds_by_size.300K must be an integer >= 1, got 0")]:
        toml.write_text(f'sizes = ["100K", "300K"]\nsteps = 3\n[seeds_by_size]\n{text}\n')
        with pytest.raises(ConfigError, match=f"^{message}$"):
            plan_sweep(load_sweep_config(toml))
    out = tmp_path / "sw"
    config = SweepConfig(sizes=("100K",), lrs=(3e-3,), seeds_by_size={"100K": 2}, steps=4, executor="debug",
                         max_extend=0, out=str(out), train=tiny_train(corpus))
    run_sweep(config, progress=False, echo=lambda _: None)
    assert sorted(collect_runs(out).seed) == [0, 1]
    assert records.read_json(out / "sweep.json")["sizes"]["100K"]["seeds"] == 2
    # the same sweep without the extra seed: nothing is dropped and nothing runs again
    run_sweep(dataclasses.replace(config, seeds_by_size={}), progress=False, echo=lambda _: None)
    assert sorted(collect_runs(out).seed) == [0, 1]
    assert [len(starts(p)) for p in sorted(out.glob("100K/*"))] == [1, 1]


def test_a_sweep_file_with_arms_runs_each_arm_in_its_own_directory(tmp_path, corpus):
    toml = tmp_path / "arms.toml"
    train = tiny_train(corpus)
    toml.write_text(f"""default_arms = ["a", "b"]
sizes = ["100K"]
lrs = [3e-3]
steps = 3
executor = "debug"
max_extend = 0
[train]
batch_size = {train["batch_size"]}
[train.data]
corpus = "{corpus}"
seq_len = {train["data"]["seq_len"]}
[arms.a]
seeds = 2
[arms.b]
lrs = [1e-3]
[arms.c]
train.model = {{ parametrization = "completep" }}
""")
    out = tmp_path / "cmp"
    runner = CliRunner()
    res = runner.invoke(main, ["sweep", "--config", str(toml), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["a", "b"]
    assert sorted(collect_runs(out / "a").seed) == [0, 1] and collect_runs(out / "b").lr.tolist() == [1e-3]
    assert res.output.count(str(out / "a")) == 1 and res.output.count(str(out / "b")) == 1
    # every chosen arm is planned before any runs: arm c's missing base size stops the command
    for args, message in [(["--arms", "a,c"], "needs base_size"),
                          (["--arms", "z"], "no arm 'z' in"),
                          (["--no-wait"], "--no-wait starts one sweep")]:
        res = runner.invoke(main, ["sweep", "--config", str(toml), "--out", str(tmp_path / "bad"), *args])
        assert res.exit_code == 2 and res.output.startswith("error: ") and message in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
    res = runner.invoke(main, ["sweep", "--sizes", "100K", "--arms", "a", "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and res.output.strip() == "error: --arms needs a sweep file with [arms.NAME] tables (--config)"
    with pytest.raises(ConfigError, match="holds arms \\(a, b, c\\): pick one"):
        load_sweep_config(toml)
