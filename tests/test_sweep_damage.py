"""A damaged sweep, broken on purpose: damage stays local, failures say why, nothing is made unusable.

Killed trainers and jobs (their cause is recorded), torn or empty cell files (reported by path,
left out, moved aside and rerun), a torn sweep.json (one line), a refused second driver (writes
nothing), a full disk (one line, finished cells kept), the checkpoints a finished sweep keeps,
and ``scaling status --watch``. Every trainer run is real (size 100K, a few steps of 2 x 64 tokens).
"""
from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from click.testing import CliRunner

from mm1model import records
from mm1model.checkpoint import checkpoint_paths
from scaling import cells
from scaling.cli import main
from scaling.executors import describe_exit, format_gb
from scaling.runs import collect_runs
from scaling.sweep import (SweepsResult, format_bytes, format_duration, run_status, run_sweep, sweep_eta,
                           watch_status)
from scaling.sweep_plan import SweepConfig
from test_sweep import starts, tiny_train, wait_for, write_toml

CLI = [sys.executable, "-c", "from scaling.cli import main; main()"]


def debug_sweep(tmp_path: Path, corpus: str, name: str = "sw", sizes=("100K",), lrs=(1e-3, 3e-3, 1e-2),
                steps: int = 8, **extra) -> SweepConfig:
    return SweepConfig(sizes=sizes, lrs=lrs, steps=steps, executor="debug", max_extend=0,
                       out=str(tmp_path / name), train=tiny_train(corpus), **extra)


def quiet(config: SweepConfig, **kwargs):
    said: list[str] = []
    result = run_sweep(config, progress=False, echo=said.append, **kwargs)
    return result, said


def cut_in_half(path: Path) -> bytes:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return data[: len(data) // 2]


# ------------------------------------------------------------------------------ failures say why
def test_describe_exit_names_codes_and_signals():
    assert describe_exit(returncode=3) == "exit code 3"
    assert describe_exit(returncode=143) == "exit code 143 (128 + SIGTERM)"
    assert describe_exit(signum=signal.SIGSEGV) == "killed by SIGSEGV"
    assert describe_exit(returncode=-9, peak_rss_bytes=1.234e9) == \
        "killed by SIGKILL, probably out of memory: peak RSS 1.23 GB"
    assert describe_exit(signum=9) == "killed by SIGKILL, probably out of memory: peak RSS unknown"
    assert format_gb(None) == "unknown" and format_bytes(86_213_000) == "86.2 MB" and format_bytes(512) == "512 B"


def test_a_killed_trainer_and_a_killed_job_record_why(tmp_path, corpus):
    """kill -9 of the trainer (the job sees its signal and peak memory), then of the retry's job
    process itself (the driver, which watched it die, records what is known)."""
    out = tmp_path / "oom"
    config = SweepConfig(sizes=("100K",), lrs=(3e-3,), steps=20_000, executor="local", max_parallel=1,
                         max_retries=1, max_extend=0, out=str(out),
                         train=tiny_train(corpus, checkpoint_interval=10_000))
    cell = out / "100K" / "lr=3.00e-03_seed=0"
    said: list[str] = []
    done: dict = {}
    driver = threading.Thread(target=lambda: done.setdefault("result", run_sweep(config, progress=False,
                                                                                  echo=said.append)))
    driver.start()

    def attempt(n: int) -> dict | None:
        attempts = cells.read_attempts(cell) if (cell / "attempts.json").exists() else []
        ready = len(attempts) >= n and attempts[n - 1].get("peak_rss_bytes") and len(starts(cell)) >= n
        return attempts[n - 1] if ready else None

    wait_for(lambda: attempt(1), 120, "the first trainer to train")
    first = attempt(1)
    assert first["trainer_pid"] != first["pid"]  # the trainer runs in a process of its own
    os.kill(first["trainer_pid"], signal.SIGKILL)
    wait_for(lambda: attempt(2), 120, "the retry's trainer to train")
    os.kill(attempt(2)["pid"], signal.SIGKILL)  # the job process itself; its trainer dies with it
    driver.join(180)
    assert not driver.is_alive()
    one, two = cells.read_attempts(cell)
    assert one["outcome"] == two["outcome"] == "failed"
    assert one["error"].startswith("killed by SIGKILL, probably out of memory: peak RSS ") and one["error"].endswith(" GB")
    assert 50e6 < one["peak_rss_bytes"] < 10e9  # the kernel's count for the trainer (torch imported)
    assert two["error"].startswith("the job process died without a result; peak RSS ")
    assert two["error"].endswith(" GB when last recorded")
    cause = f"giving up after 2 attempt(s): {two['error']}"
    assert any(line.endswith(cause) for line in said), said
    assert SweepsResult(plans=[], sweeps=[done["result"]]).failure.endswith(f"{cell}: {cause})")
    status = CliRunner().invoke(main, ["status", str(out)])
    assert status.exit_code == 0 and f"failed 100K lr=3.00e-03 seed=0: {cause}" in status.output, status.output
    assert not any(line.endswith(": None") for line in said + status.output.splitlines())


# ------------------------------------------------------------------------------ damage stays local
def test_damaged_cells_stay_local_and_the_next_sweep_repairs_them(tmp_path, corpus):
    config = debug_sweep(tmp_path, corpus, sizes=("100K", "300K"), lrs=(1e-3, 3e-3, 1e-2), steps=6)
    out = Path(config.out)
    quiet(config)
    a, b, c = out / "100K" / "lr=1.00e-03_seed=0", out / "100K" / "lr=3.00e-03_seed=0", out / "300K" / "lr=1.00e-03_seed=0"
    torn = {a / "result.json": cut_in_half(a / "result.json"), b / "attempts.json": cut_in_half(b / "attempts.json")}
    (c / "cell.json").write_bytes(b"")
    torn[c / "cell.json"] = b""
    lines = [f"warning: {a / 'result.json'} cannot be read (not JSON: ",
             f"warning: {b / 'attempts.json'} cannot be read (not JSON: ",
             f"warning: {c / 'cell.json'} cannot be read (empty file): cell left out; the next `scaling sweep` "
             f"moves the file(s) into {c / 'damaged'}/ and runs the cell again"]
    runner = CliRunner()
    status = runner.invoke(main, ["status", str(out)])
    assert status.exit_code == 0, status.output
    for line in lines:
        assert line in status.output, status.output
    # counted as waiting (not final): 100K has 1 of 3 done, 300K 2 of 3
    assert "  100K     1    0    0    0    2     3" in status.output and "  300K     2    0    0    0    1     3" in status.output
    collect = runner.invoke(main, ["collect", str(out)])
    assert collect.exit_code == 0 and len(collect.stdout.strip().splitlines()) == 1 + 3, collect.output
    assert all(line in collect.stderr for line in lines), collect.stderr
    fit = subprocess.run(CLI + ["fit", str(out), "--bootstrap", "0", "--select", "argmin", "--out", str(tmp_path / "fit")],
                         capture_output=True, text=True, timeout=300)
    assert fit.returncode == 0, fit.stderr
    assert all(line in fit.stderr for line in lines), fit.stderr
    # the rerun moves the unreadable files aside (never deleted) and runs what lost its result
    _, said = quiet(config)
    for path, data in torn.items():
        [kept] = (path.parent / "damaged").glob(f"*/{path.name}")
        assert kept.read_bytes() == data
        assert any(line.startswith(f"warning: {path} cannot be read") and "moved into" in line for line in said), said
    assert len(collect_runs(out)) == 6 and (collect_runs(out).status == "ok").all()
    assert len(starts(a)) == 2 and len(starts(b)) == len(starts(c)) == 1  # only the lost result ran again
    assert sorted(records.read_json(c / "cell.json")) == ["lr", "seed", "size", "train"]
    # a torn sweep.json: one line naming it, for every command; the cells are untouched
    cut_in_half(out / "sweep.json")
    for args in (["status", str(out)], ["collect", str(out)], ["fit", str(out), "--out", str(tmp_path / "f2")],
                 ["sweep", "--config", str(write_toml(tmp_path / "s.toml", corpus, [1e-3], steps=6)), "--executor",
                  "debug", "--out", str(out)]):
        res = runner.invoke(main, args)
        assert res.exit_code == 2, (args, res.output)
        assert res.output.strip().splitlines() == [res.output.strip()]
        assert res.output.startswith(f"error: {out / 'sweep.json'} cannot be read (not JSON: ") and "move it aside" in res.output
    assert len(list(out.glob("*/*/result.json"))) == 6


def test_a_refused_driver_writes_nothing(tmp_path, corpus):
    toml = write_toml(tmp_path / "s.toml", corpus, [1e-3], steps=4)
    out = tmp_path / "busy"
    args = ["sweep", "--config", str(toml), "--executor", "debug", "--out", str(out)]
    assert CliRunner().invoke(main, args).exit_code == 0
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        records.write_json(out / "lock", {"host": socket.gethostname(), "pid": holder.pid, "job_id": None})
        before = (out / "sweep.json").read_bytes()
        cells_before = sorted(out.glob("*/*"))
        for extra in ([], ["--no-wait"]):
            res = CliRunner().invoke(main, [*args, "--lrs", "5e-3,7e-3", *extra])
            assert res.exit_code == 2
            assert res.output == (f"error: {out} is being run by another sweep (pid {holder.pid} on "
                                  f"{socket.gethostname()}); wait for it or kill it first\n")
            assert (out / "sweep.json").read_bytes() == before
            assert sorted(out.glob("*/*")) == cells_before
    finally:
        holder.kill()
        holder.wait()


def test_a_full_disk_is_one_line_and_a_rerun_finishes_every_cell_once(tmp_path, corpus, monkeypatch):
    toml = write_toml(tmp_path / "s.toml", corpus, [1e-3, 3e-3, 1e-2], steps=6)
    out = tmp_path / "full"
    args = ["sweep", "--config", str(toml), "--executor", "debug", "--out", str(out)]
    write_json = records.write_json
    second = out / "100K" / "lr=3.00e-03_seed=0" / "attempts.json"

    def full_disk(path, obj):  # the disk fills up while the second cell starts
        if Path(path) == second:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write_json(path, obj)

    monkeypatch.setattr(records, "write_json", full_disk)
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2
    # after the first cell's progress line, one line and no traceback
    assert res.output.splitlines()[1:] == [f"error: disk full writing {second}: free space and rerun; "
                                           "finished cells are kept"], res.output
    first = out / "100K" / "lr=1.00e-03_seed=0"
    assert records.read_json(first / "result.json")["status"] == "ok"
    monkeypatch.setattr(records, "write_json", write_json)  # space freed
    assert CliRunner().invoke(main, args).exit_code == 0
    assert (collect_runs(out).status == "ok").all() and len(collect_runs(out)) == 3
    assert [len(starts(p)) for p in sorted(out.glob("100K/*"))] == [1, 1, 1]


# ------------------------------------------------------------------------------ what a sweep keeps
def test_final_cells_lose_their_checkpoints_unless_asked_to_keep_the_last(tmp_path, corpus):
    pruned, _ = quiet(debug_sweep(tmp_path, corpus, "pruned", lrs=(3e-3, 30.0), steps=12))
    kept, _ = quiet(debug_sweep(tmp_path, corpus, "kept", lrs=(3e-3, 30.0), steps=12), keep_checkpoints=True)
    ok, diverged = (pruned.dir / "100K" / "lr=3.00e-03_seed=0", pruned.dir / "100K" / "lr=3.00e+01_seed=0")
    assert {st.path: st.status for st in cells_of(pruned.dir)} == {ok: "ok", diverged: "diverged"}
    assert not (ok / "checkpoints").exists() and not (diverged / "checkpoints").exists()
    # the trainer keeps two (steps 4 and 8 of 12); a kept sweep keeps the newest
    ok_kept = kept.dir / "100K" / "lr=3.00e-03_seed=0"
    assert [p.name for p in checkpoint_paths(ok_kept)] == ["step_00000008"]
    assert sorted(p.name for p in (ok_kept / "checkpoints").iterdir()) == ["step_00000008"]
    status = run_status(kept.dir)
    assert status.disk_bytes > run_status(pruned.dir).disk_bytes
    assert f"disk: {format_bytes(status.disk_bytes)} under {kept.dir}" in status.summary()


def cells_of(sweep_dir: Path) -> list[cells.CellState]:
    return [cells.cell_state(p) for p in sorted(sweep_dir.glob("100K/*"))]


# ------------------------------------------------------------------------------ status --watch
def fake_sweep(root: Path, walls: dict[float, float | None], parallel: int = 2) -> Path:
    """A sweep directory by hand: cells of 100K at the given LRs, finished (with that wall time)
    or pending (None)."""
    records.write_json(root / "sweep.json", {"train": {}, "sizes": {"100K": {"lrs": sorted(walls), "extended": []}},
                                             "extensions": [], "max_parallel": parallel})
    for lr, wall in walls.items():
        cell = root / "100K" / cells.cell_name(lr, 0)
        cells.write_cell(cell, "100K", lr, 0, {})
        if wall is not None:
            records.write_json(cell / "result.json", {"status": "ok", "final_val_loss": 5.0 - lr, "wall_s": wall})
    return root


def test_watch_refreshes_with_an_eta_until_the_sweep_is_done(tmp_path):
    root = fake_sweep(tmp_path / "w", {1e-3: 30.0, 2e-3: 90.0, 4e-3: None, 8e-3: None, 1.6e-2: None})
    assert sweep_eta(cells_of(root), 2) == (90.0, 3)  # 3 cells x 60 s mean, 2 at a time
    assert format_duration(90) == "1m30s" and format_duration(7500) == "2h05m" and format_duration(5) == "5s"
    # a live driver holds the sweep: the watch goes on; a cell finishes between two refreshes
    records.write_json(root / "lock", {"host": socket.gethostname(), "pid": os.getpid()})
    shown, slept = [], []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 1:
            records.write_json(root / "100K" / cells.cell_name(4e-3, 0) / "result.json",
                               {"status": "ok", "final_val_loss": 4.0, "wall_s": 60.0})

    last = watch_status(root, 5.0, echo=shown.append, count=3, sleep=sleep, clock=lambda: 0.0)
    assert slept == [5.0, 5.0] and len(shown) == 3
    assert shown[0].endswith("ETA 1m30s: 3 cell(s) left, 2 at a time")
    assert shown[1].endswith("ETA 1m00s: 2 cell(s) left, 2 at a time")
    assert "\n  100K     3    0    0    0    2     5   4.00e-03  4.0000\n" in shown[1]
    assert not last.done
    # without a driver nothing will change: one refresh, and it says what is left
    (root / "lock").unlink()
    shown.clear()
    assert watch_status(root, 5.0, echo=shown.append, sleep=slept.append).done and len(shown) == 1
    res = CliRunner().invoke(main, ["status", str(root), "--watch", "0.01", "--watch-count", "2"])
    assert res.exit_code == 0 and res.output.count("ETA 1m00s: 2 cell(s) left") == 1, res.output
    records.write_json(root / "lock", {"host": socket.gethostname(), "pid": os.getpid()})
    res = CliRunner().invoke(main, ["status", str(root), "--watch", "0.01", "--watch-count", "2"])
    assert res.exit_code == 0 and res.output.count("ETA 1m00s: 2 cell(s) left") == 2, res.output
    bad = CliRunner().invoke(main, ["status", str(root), "--watch", "0"])
    assert bad.exit_code == 2 and bad.output == "error: --watch takes a number of seconds > 0, got 0\n"
