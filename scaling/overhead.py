"""The per-cell overhead of a sweep: seconds from submitting one cell (:class:`scaling.cells.CellJob`
through :mod:`scaling.executors`) to the end of its first optimizer step: process start, imports,
corpus open, model build, validation set, the first step. The reference is the 5 s target.

Run it with ``python -m scaling.overhead [--executor local|slurm|all] [--repeats N] [--size NAME]
[--json]`` (``all``, the default: local, then SLURM when a cluster answers; ``$SLURM_PREFIX/env.sh``
of scripts/slurm-start.sh is applied first when SLURM_CONF is unset). Each measurement is a
:class:`mm1model.bench.compare.Comparison` named ``sweep_overhead/EXECUTOR``, printed as
``python -m mm1model.bench --compare`` prints its comparisons (``--json``: one object per line).
Bad input prints ``error: ...`` and exits 2.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from mm1model import records
from mm1model.bench.compare import Comparison, format_comparison, to_record
from mm1model.config import ConfigError
from scaling.cells import CellJob, write_cell
from scaling.executors import check_slurm, load_slurm_env_file, make_executor, slurm_problem
from scaling.workers import WorkerPool

OVERHEAD_TARGET_S = 5.0
# A warm worker of the local sweep (scaling.workers) imports nothing per cell: its target is 1 s.
POOL_TARGET_S = 1.0
# local: one submitit process per cell (launches, and sweeps before the warm workers); pool: the
# local sweep's warm workers; slurm: one sbatch job per cell.
OVERHEAD_EXECUTORS = ("local", "pool", "slurm")


def overhead_cell_train(corpus: str | None = None, size: str = "1M") -> dict[str, Any]:
    """The TrainConfig dict of one CPU sweep cell (``sweeps/cpu.toml``'s per-cell settings) that
    stops after 2 steps; only the time to its first step is measured."""
    data: dict[str, Any] = {"seq_len": 128}
    if corpus is not None:
        data["corpus"] = corpus
    return {"size": size, "optimizer": {"lr": 1e-3, "warmup_steps": 1, "decay_steps": 2}, "seed": 0, "steps": 2,
            "batch_size": 8,
            "threads": 1, "eval_interval": 0, "eval_sequences": 32, "checkpoint_interval": 0, "log_interval": 50,
            "data": data}


def time_to_first_step(cell_dir: Path, submitted: float) -> dict[str, float]:
    """Seconds from ``submitted`` (epoch) to the trainer's start event (setup done: imports,
    corpus, model, validation set) and to the end of its first optimizer step, read from the
    run's ``events.jsonl`` and ``metrics.jsonl``."""
    start = next(e["time"] for e in records.read_jsonl(cell_dir / "events.jsonl") if e["event"] == "start")
    first = next(r for r in records.read_jsonl(cell_dir / "metrics.jsonl") if r.get("step") == 1)
    # the loop's wall clock starts right after the start event
    return {"to_setup_s": start - submitted, "to_first_step_s": start + first["wall_s"] - submitted,
            "first_step_s": first["wall_s"]}


def _load_average() -> float:
    return round(os.getloadavg()[0], 2)


def measure_overhead(executor: str = "local", repeats: int = 3, corpus: str | None = None,
                     root: Path | None = None, size: str = "1M") -> Comparison:
    """``sweep_overhead/EXECUTOR``: median seconds from submitting a sweep cell to the end of its
    first optimizer step, over ``repeats`` cells run one after another. ``root``: where the cells
    and submitit's files go (default: a temporary directory, removed afterwards)."""
    if executor not in OVERHEAD_EXECUTORS:
        raise ConfigError(f"unknown executor '{executor}'; valid: {', '.join(OVERHEAD_EXECUTORS)}")
    if executor == "slurm":
        check_slurm(hint="measure --executor local only")
    load = _load_average()
    owned = root is None
    root = Path(tempfile.mkdtemp(prefix="mm1-overhead-")) if root is None else Path(root)
    pool = executor == "pool"
    try:
        if pool:  # one warm worker; its first cell pays the warm-up and is not counted
            ex, job_of, cells = WorkerPool(1), CellJob(supervise=True), repeats + 1
        else:
            parameters = {"timeout_min": 30} if executor == "local" else {"time": 30, "cpus_per_task": 1,
                                                                          "job_name": "mm1-overhead"}
            ex, job_of, cells = make_executor(executor, root / ".submitit", parameters), CellJob(), repeats
        train = overhead_cell_train(corpus, size)
        runs = []
        for i in range(cells):
            cell = root / f"cell{i}"
            write_cell(cell, train["size"], train["optimizer"]["lr"], train["seed"], train)
            submitted = time.time()
            job = ex.submit(job_of, str(cell))
            outcome = job.result()
            if outcome.get("status") != "ok":
                raise RuntimeError(f"overhead cell {cell} ended {outcome}")
            runs.append(time_to_first_step(cell, submitted))
        if pool:
            ex.shutdown()
            warm_up, runs = runs[0], runs[1:]
    finally:
        if owned:
            shutil.rmtree(root, ignore_errors=True)
    ours = statistics.median(r["to_first_step_s"] for r in runs)
    target = POOL_TARGET_S if pool else OVERHEAD_TARGET_S
    extra = {"first_cell_of_the_worker": {k: round(v, 3) for k, v in warm_up.items()}} if pool else {}
    return Comparison(f"sweep_overhead/{executor}", ours, target, "s", target / ours, 1.0,
                      {"ours_is": f"submit -> end of the first optimizer step of a {size} cell "
                                  "(batch 8 x 128, 1 thread, 32 validation sequences)",
                       "reference_is": "the 5 s target", "runs": [{k: round(v, 3) for k, v in r.items()} for r in runs],
                       "setup_s_median": statistics.median(r["to_setup_s"] for r in runs),
                       "repeats": repeats, "load_before": load, "load_after": _load_average(), **extra})


def measure_all(repeats: int = 3, corpus: str | None = None, size: str = "1M",
                echo: Callable[[str], None] = lambda _: None) -> list[Comparison]:
    """The local overheads (a process per cell, then the warm workers), then the SLURM one when a
    cluster answers (else a line through ``echo``)."""
    out = []
    for executor in ("local", "pool"):
        out.append(measure_overhead(executor, repeats, corpus, size=size))
        echo(format_comparison(out[-1]))
    problem = slurm_problem()
    if problem:
        echo(f"skip sweep_overhead/slurm: {problem}")
        return out
    out.append(measure_overhead("slurm", repeats, corpus, size=size))
    echo(format_comparison(out[-1]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scaling.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--executor", choices=(*OVERHEAD_EXECUTORS, "all"), default="all")
    parser.add_argument("--repeats", type=int, default=3, help="cells run one after another (median)")
    parser.add_argument("--size", default="1M", help="the cell's model size (see `scaling sizes`)")
    parser.add_argument("--corpus", help="corpus directory (default: the prepared one)")
    parser.add_argument("--json", action="store_true", help="print JSON objects, one per line")
    args = parser.parse_args(argv)
    load_slurm_env_file()  # the stand-in sacct of scripts/slurm-start.sh, as `make test` sources it
    echo = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else (lambda line: print(line, flush=True))
    try:
        if args.repeats < 1:
            raise ConfigError(f"--repeats must be >= 1, got {args.repeats}")
        if args.executor == "all":
            results = measure_all(args.repeats, args.corpus, args.size, echo)
        else:
            results = [measure_overhead(args.executor, args.repeats, args.corpus, size=args.size)]
            echo(format_comparison(results[0]))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        for result in results:
            print(json.dumps(to_record(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
