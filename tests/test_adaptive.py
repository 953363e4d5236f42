"""Adaptive sweeps on the replay executor (the recorded dense CPU sweep, tests/data): the nearest
recorded run answers each cell, the adaptive strategy finds each size's optimum in fewer runs
than the fixed grid, `status` says why each size stopped, and kill -9 neither loses nor
duplicates a cell."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from scaling import adaptive
from scaling.cli import main
from scaling.fit import fit_runs, read_runs
from scaling.runs import collect_runs
from scaling.sweep import run_sweeps

DENSE = Path(__file__).parent / "data" / "cpu-dense-runs.csv"
SIZES = ("w32", "w64", "w128")
REPO = Path(__file__).resolve().parent.parent


def _sweep_file(tmp: Path, delay_s: float = 0.0) -> Path:
    """The dense sweep's settings, adaptive, answered from its own recorded runs."""
    text = (REPO / "sweeps" / "cpu-dense.toml").read_text()
    # CPU runs of 150 steps are noisy (w32's seed sd is 0.14 nats): every recorded run of w32 together
    # locates its optimum to +/-0.56 in ln lr, so that is the precision asked for here
    text = text.replace('executor = "local"', f'executor = "replay:{DENSE}"\nmode = "adaptive"\n'
                                              f'target_halfwidth = 0.6\nreplay_delay_s = {delay_s}')
    path = tmp / "adaptive.toml"
    path.write_text(text)
    return path


def _cells(out: Path) -> dict[str, float]:
    runs = collect_runs(out)
    return {Path(p).relative_to(out).as_posix(): loss for p, loss in zip(runs["path"], runs["loss"])}


@pytest.fixture(scope="module")
def adaptive_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adaptive")
    out = tmp / "sweep"
    lines: list[str] = []
    run_sweeps(_sweep_file(tmp), flags={"out": str(out)}, echo=lines.append)
    return tmp, out, lines


def test_replay_answers_each_cell_with_the_nearest_recorded_run(tmp_path):
    recorded = read_runs([DENSE])
    w32 = recorded[recorded["size"] == "w32"]
    grid = sorted(w32["lr"].unique())
    asked = (float(f"{grid[1] * 1.1:.2e}"), float(f"{grid[3] / 1.12:.2e}"))  # 3 digits, as cells keep them
    out = tmp_path / "fixed"
    result = run_sweeps(REPO / "sweeps" / "cpu-dense.toml", echo=print,
                        flags={"sizes": ("w32",), "lrs": asked + (1e-4,), "executor": f"replay:{DENSE}",
                               "out": str(out), "max_retries": 0})
    # an LR far below the record has no answer: that cell fails, saying so, and nothing else does
    assert result.failure.endswith("replay: lr 0.0001 is outside the recorded w32 LRs [0.00197, 0.0312]: no "
                                   "recorded run answers it)")
    assert len(result.gave_up) == 2
    runs = collect_runs(out)
    runs = runs[runs["status"] == "ok"].sort_values(["lr", "seed"])
    assert sorted(runs["lr"].unique()) == sorted(asked)  # the design's LRs, not the recorded ones
    for lr, near in zip(sorted(asked), (grid[1], grid[3])):
        for seed in (0, 1):
            want = w32[(w32["lr"] == near) & (w32["seed"] == seed)]["loss"].item()
            assert runs[(runs["lr"] == lr) & (runs["seed"] == seed)]["loss"].item() == pytest.approx(want, abs=1e-12)


def test_a_replay_table_without_the_size_is_one_line(tmp_path):
    out = tmp_path / "none"
    result = CliRunner().invoke(main, ["sweep", "--config", str(REPO / "sweeps" / "cpu-dense.toml"), "--sizes",
                                       "w32,3M", "--executor", f"replay:{DENSE}", "--out", str(out)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: replay table {DENSE} has no runs of size 3M; it records w128, w256, w32, w64"]
    assert not out.exists()


def test_adaptive_finds_each_optimum_in_fewer_runs_than_the_fixed_grid(adaptive_sweep):
    """The known optimum of a size is the one selected from every recorded run (its 9 LRs x 2
    seeds), with its 95% bootstrap interval as the tolerance: the adaptive sweep's optimum lies
    inside it, and the adaptive sweep took fewer runs than the recorded grid."""
    tmp, out, lines = adaptive_sweep
    recorded = read_runs([DENSE])
    recorded = recorded[recorded["size"].isin(SIZES)]
    known = {o["size"]: o for o in fit_runs(recorded, bootstrap=200).optima}
    runs = collect_runs(out)
    found = {o["size"]: o["lr_opt"] for o in fit_runs(runs).optima}
    # replay answers from the nearest recorded LR: a fair test where the record is dense (9 LRs)
    dense = [size for size in SIZES if recorded[recorded["size"] == size]["lr"].nunique() >= 9]
    assert "w32" in dense
    for size in dense:
        lo, hi = known[size]["lr_ci95"]
        assert lo <= found[size] <= hi, (size, found[size], known[size]["lr_ci95"])
    assert runs.groupby("size").size().to_dict() == {"w32": 16, "w64": 18, "w128": 12}
    assert len(runs) < 9 * 2 * len(SIZES)  # the dense sweep's fixed grid: 9 LRs x 2 seeds per size
    assert (runs["size"] == "w32").sum() < (recorded["size"] == "w32").sum()
    stopped = adaptive.read_record(out)
    assert sorted(stopped) == sorted(SIZES) and all(entry["stopped"] for entry in stopped.values())
    status = CliRunner().invoke(main, ["status", str(out)])
    assert status.exit_code == 0
    for size in SIZES:
        assert f"{size}: stopped after {stopped[size]['lrs']} LRs: {stopped[size]['stopped']}" in status.output


def test_kill_9_and_rerun_neither_loses_nor_duplicates_a_cell(adaptive_sweep, tmp_path):
    _, reference, _ = adaptive_sweep
    out = tmp_path / "killed"
    config = _sweep_file(tmp_path, delay_s=0.1)
    proc = subprocess.Popen([sys.executable, "-c", "from scaling.cli import main; main()", "sweep", "--config",
                             str(config), "--sizes", "w32,w64", "--out", str(out)], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.time() + 120
        while len(list(out.glob("w*/*/result.json"))) < 4 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the sweep ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = _cells(out)
    run_sweeps(config, flags={"out": str(out), "sizes": ("w32", "w64"), "replay_delay_s": 0.0},
               echo=lambda line: None)
    # the smallest sizes first: w32's and w64's decisions do not depend on w128
    after = _cells(out)
    want = {c: loss for c, loss in _cells(reference).items() if not c.startswith("w128/")}
    assert len(before) < len(after)  # the kill left cells to do
    assert set(after) == set(want)  # the same decisions, so the same cells
    assert all(after[c] == want[c] or (math.isnan(after[c]) and math.isnan(want[c])) for c in want)
    assert all(after[c] == loss or math.isnan(loss) for c, loss in before.items())  # nothing finished was redone
    for cell in out.glob("w*/*/"):
        # at most the killed attempt and one more; never two that finished (a kill between a
        # cell's result.json and its attempt's outcome leaves that attempt open, the cell final)
        attempts = pd.read_json(cell / "attempts.json")
        assert len(attempts) <= 2 and (attempts["outcome"] == "ok").sum() <= 1, cell
        assert (cell / "result.json").exists()
    assert not np.isnan(list(after.values())).any()
