"""The replay executor: answer each sweep cell from a recorded sweep's runs table, without training.

``--executor replay:RUNS.csv`` (or ``executor = "replay:RUNS.csv"`` in a sweep file) drives a
sweep exactly as the local executor does (the same cell directories, ``attempts.json``, locks,
resume and edge extensions), but a cell's ``result.json`` is the recorded run that answers it:
at the cell's size, batch size and step count, **the recorded LR nearest to the asked one in ln
lr**, and there the recorded run of the cell's seed. The asked LR is kept as the cell's (the fit
sees the design's grid); ``replayed`` in result.json says which recorded run answered. Nearest,
not an interpolation: an interpolated loss would average two recorded runs and so halve their
seed noise, the very thing a design is scored against.

A cell nothing recorded answers fails, saying so in one line, rather than reusing another run:
an LR more than half a recorded step beyond the recorded range (it would repeat the edge run's
loss), a batch size or step count the table does not record at that size (a run of another
shape is not this cell's), or a seed not recorded at that LR (wrapping seeds around would
duplicate runs and understate the seed noise). So any design or strategy (a fixed grid,
:mod:`scaling.adaptive`) can be scored on real losses.

A table without the asked size, batch size, step count or seeds is one ConfigError line before
anything is written (:func:`check_replay_plan`, which :func:`scaling.sweep.run_sweep` calls).
"""
from __future__ import annotations

import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from mm1model.config import ConfigError
from scaling import cells
from scaling.executors import FinishedJob, replay_table_path
from scaling.runs import read_runs_file
from scaling.sweep_plan import SweepPlan


class ReplayTable:
    """A recorded runs table, by size (the ``size`` column; failed rows left out)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"replay: no runs table at {self.path}")
        runs = read_runs_file(self.path)
        missing = [c for c in ("size", "lr", "loss", "status") if c not in runs]
        if missing:
            raise ConfigError(f"replay: {self.path} lacks column(s) {', '.join(missing)}")
        self.runs = runs[runs["status"] != "failed"].reset_index(drop=True)

    @property
    def sizes(self) -> list[str]:
        return sorted({str(s) for s in self.runs["size"]})

    def check_sizes(self, sizes: Sequence[str]) -> None:
        """One ConfigError line naming the sizes the table does not record."""
        missing = [s for s in sizes if s not in self.sizes]
        if missing:
            raise ConfigError(f"replay table {self.path} has no runs of size {', '.join(missing)}; "
                              f"it records {', '.join(self.sizes)}")

    def answer(self, size: str, lr: float, seed: int, batch_size: int | None = None,
               steps: int | None = None) -> dict[str, Any]:
        """The recorded run that answers a cell (see the module's rule): its row as a dict, or
        {"error": why} when no recorded run answers it (an LR outside the record, a batch size,
        step count or seed it does not record)."""
        runs = self.runs[self.runs["size"].astype(str) == size]
        if not len(runs):
            self.check_sizes([size])
        for column, value in (("batch_size", batch_size), ("steps", steps)):
            if value is not None and column in runs and runs[column].notna().any():
                recorded = runs[column].dropna().unique()
                runs = runs[runs[column] == value]
                if not len(runs):
                    return {"error": f"replay table records no {size} run at {column} {value:g} (it records "
                                     f"{', '.join(f'{v:g}' for v in sorted(recorded))})"}
        grid = np.unique(np.log(runs["lr"].astype(float)))
        x = math.log(lr)
        half = (np.diff(grid).min() / 2) if len(grid) > 1 else 0.0
        if x < grid[0] - half - 1e-9 or x > grid[-1] + half + 1e-9:
            return {"error": f"lr {lr:.3g} is outside the recorded {size} LRs "
                             f"[{math.exp(grid[0]):.3g}, {math.exp(grid[-1]):.3g}]: no recorded run answers it"}
        nearest = grid[int(np.argmin(np.abs(grid - x)))]
        at = runs[np.isclose(np.log(runs["lr"].astype(float)), nearest)]
        seeds = sorted(int(s) for s in at["seed"]) if "seed" in at else list(range(len(at)))
        if seed not in seeds:
            return {"error": f"seed {seed} is not recorded at {size} lr {math.exp(nearest):.3g} (it records seed(s) "
                             f"{', '.join(map(str, seeds))}): no recorded run answers it"}
        return (at[at["seed"] == seed] if "seed" in at else at.iloc[[seed]]).iloc[0].to_dict()

    def check_plan(self, plan: SweepPlan) -> None:
        """One ConfigError line for the first of ``plan``'s sizes, batch sizes, step counts and
        seeds the table does not record (an LR outside the record is the cell's own failure)."""
        self.check_sizes([sp.size for sp in plan.sizes])
        for sp in plan.sizes:
            runs = self.runs[self.runs["size"].astype(str) == sp.size]
            for curve in sp.curves:
                for column, values in (("batch_size", [curve.batch_size]), ("steps", curve.horizons)):
                    if column not in runs or not runs[column].notna().any():
                        continue
                    recorded = {float(v) for v in runs[column].dropna()}
                    missing = [v for v in values if float(v) not in recorded]
                    if missing:
                        raise ConfigError(f"replay table {self.path} records no {sp.size} run at {column} "
                                          f"{missing[0]:g}; it records {', '.join(f'{v:g}' for v in sorted(recorded))}")
            for lr, seeds in (runs.groupby("lr")["seed"] if "seed" in runs else ()):
                if not set(range(sp.seeds)) <= {int(s) for s in seeds}:
                    raise ConfigError(f"the sweep asks seeds 0-{sp.seeds - 1} of {sp.size}; replay table {self.path} "
                                      f"records seed(s) {', '.join(map(str, sorted({int(s) for s in seeds})))} "
                                      f"at lr {lr:.3g}")


class ReplayExecutor:
    """Runs each cell at submission, in this process, from a :class:`ReplayTable`.

    ``submit(job, cell_dir)`` takes the cell's lock and records an attempt as a training job
    does, writes ``result.json`` (atomically, before the attempt's outcome: a kill between
    the two leaves a final cell) and returns a finished job. ``delay_s``: seconds each cell
    takes (0: none), so a test can kill a sweep between cells."""

    def __init__(self, table: ReplayTable, delay_s: float = 0.0) -> None:
        self.table, self.delay_s = table, delay_s

    def submit(self, job: Callable[[str], Any] | None, cell_dir: str) -> FinishedJob:
        path = Path(cell_dir)
        if cells.final_result(path) is not None:
            return FinishedJob({"status": cells.final_result(path)["status"], "path": str(path)})
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "job_id": "replay", "since": time.time()}
        if not cells.try_lock(path, owner):
            return FinishedJob({"status": "busy", "path": str(path)})
        try:
            return FinishedJob(self._replay(path, owner))
        finally:
            cells.release_lock(path)

    def _replay(self, path: Path, owner: dict[str, Any]) -> dict[str, Any]:
        cell = cells.read_record(path / "cell.json")
        attempts = cells.read_attempts(path)
        attempts.append({"attempt": len(attempts) + 1, "host": owner["host"], "pid": owner["pid"],
                         "job_id": "replay", "started_at": time.time(), "resumed": False, "outcome": None})
        cells.write_record(path / "attempts.json", attempts)
        train = cell["train"]
        row = self.table.answer(str(cell["size"]), float(cell["lr"]), int(cell["seed"]), train.get("batch_size"),
                                train.get("steps"))
        if self.delay_s:
            time.sleep(self.delay_s)
        if "error" in row:
            attempts[-1].update(outcome="failed", error=f"replay: {row['error']}", finished_at=time.time())
            cells.write_record(path / "attempts.json", attempts)
            return {"status": "failed", "path": str(path), "error": row["error"]}
        status = str(row["status"])
        loss = float(row["loss"]) if status == "ok" else None
        seq_len = (train.get("data") or {}).get("seq_len")
        result = {"status": status, "final_val_loss": loss, "best_val_loss": loss, "steps": train.get("steps"),
                  "tokens": _number(row.get("tokens")), "wall_s": _number(row.get("wall_s")),
                  "params": _number(row.get("params")), "lr": float(cell["lr"]), "size": cell["size"],
                  "batch_size": train.get("batch_size"), "seq_len": seq_len, "seed": int(cell["seed"]),
                  "run_dir": str(path), "diverged_at_step": None, "error": None,
                  "replayed": {"table": str(self.table.path), "lr": float(row["lr"]), "seed": _number(row.get("seed"))}}
        cells.write_record(path / "result.json", result)
        attempts[-1].update(outcome=status, error=None, finished_at=time.time(), wall_s=0.0)
        cells.write_record(path / "attempts.json", attempts)
        return {"status": status, "path": str(path), "error": None}

    def map_array(self, fn: Callable[..., Any], *iterables: Any) -> list[FinishedJob]:
        return [self.submit(fn, *args) for args in zip(*iterables)]


def _number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def replay_executor(executor: str, delay_s: float = 0.0) -> ReplayExecutor:
    """The executor of ``replay:RUNS.csv``."""
    return ReplayExecutor(ReplayTable(replay_table_path(executor)), delay_s)


def check_replay_plan(plan: SweepPlan) -> None:
    """ConfigError (one line) when the replay table of ``plan``'s executor does not record one of
    its sizes, batch sizes, step counts or seeds (:meth:`ReplayTable.check_plan`)."""
    ReplayTable(replay_table_path(plan.config.executor)).check_plan(plan)


def read_replay_runs(executor: str) -> pd.DataFrame:
    """The recorded runs table of a replay executor."""
    return ReplayTable(replay_table_path(executor)).runs
