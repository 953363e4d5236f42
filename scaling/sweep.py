"""Running learning-rate grid sweeps: one trainer run per (size, lr, batch, horizon, seed) cell,
through submitit.

The layout: :mod:`scaling.sweep_plan` turns a sweep file and flags into a validated plan
(writes nothing); this module drives a plan (:func:`run_sweep`, :func:`run_sweeps` for the
``scaling sweep`` command) and reads its directory back (:func:`run_status`,
:func:`run_collect`); :mod:`scaling.cells` runs and records one cell; :mod:`scaling.executors`
says where jobs run (local processes, SLURM job arrays, in-process for debugging).

A sweep lives in one directory::

    DIR/sweep.json                      resolved config, grid and curves per size, edge extensions
    DIR/<size>/lr=3.16e-04_seed=0/      one cell = one trainer run dir (see scaling.cells)
    DIR/<size>/lr=3.16e-04_bs=16_steps=600_seed=0/   the same in a sweep of several batches/horizons
    DIR/.submitit/                      submitit's pickles and job logs

WSD trunks and branches: a branch cell starts only once its trunk is final on disk, from the
trunk's checkpoint at the branch's cooldown start, on every executor: the driver, which polls
the cells anyway, submits it then (locally to a free worker, on SLURM in the next job array).
That is more robust than a scheduler dependency (``afterok``): a trunk that diverged at or
before a branch point ends its job with success although its branch must not train (the driver
writes that branch's diverged result instead); a trunk retried as a new job or requeued would
leave a dependent job pending forever on the old id; and the rule reads files only, as a rerun
after ``kill -9`` does. A trunk keeps its checkpoints until every one of its branches is final.

Disk is the source of truth: :func:`run_sweep` decides what to run from the cell files, so a
rerun of the same command skips final cells, resumes interrupted ones from their checkpoint and
retries failed ones up to ``max_retries`` times per invocation (every attempt is recorded in
the cell's ``attempts.json``). Killing the sweep process (even ``kill -9``)
loses nothing: jobs already started keep running and own their cell's lock; the rerun waits
for them instead of starting the cell twice. Ctrl-C stops only the driver in the same way:
cells already running finish, and the next run picks up the rest.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from mm1model import records
from mm1model.checkpoint import step_dir
from mm1model.config import ConfigError, to_dict
from mm1model.train_config import TrainConfig
from scaling import cells
from scaling.executors import check_slurm, is_replay, job_failure, make_executor
from scaling.replay import check_replay_plan, replay_executor
from scaling import adaptive
from scaling.workers import WorkerPool
from scaling.launch import format_status as format_launch_status, launch_status
from scaling.runs import (LEFT, REBUILD_SWEEP_JSON, SizeStatus, cell_states, collect_runs, disk_bytes, format_bytes,
                          format_duration, format_status, rank_key, read_sweep_meta, size_status, sweep_eta,
                          sweep_status, write_runs)
from scaling.sweep_plan import (CELL_TRAIN_KEYS, CellSpec, SweepConfig, SweepPlan, cell_train, describe_plan,
                                entry_curves, executor_parameters, load_sweep_config, plan_sweep, round_lr,
                                size_cells, sweep_arms)

# errno values of a full disk (ENOSPC) or a full quota (EDQUOT)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


# ------------------------------------------------------------------------------------ sweep dir
def size_seeds(meta: dict[str, Any], size: str) -> int:
    """Seeds per LR of ``size`` in a sweep.json (one global count in sweeps made before
    ``seeds_by_size``)."""
    return meta["sizes"][size].get("seeds", meta.get("seeds", 1))


def meta_cells(meta: dict[str, Any]) -> list[CellSpec]:
    """Every cell a sweep.json describes: per size its LRs (grid and edge extensions) x curves x
    seeds, named with the sweep's ``axes`` (none in a sweep.json made before the axes)."""
    axes = tuple(meta.get("axes") or ())
    out = []
    for size, entry in meta["sizes"].items():
        lrs = sorted(set(entry.get("lrs", [])) | set(entry.get("extended", [])))
        out += size_cells(size, lrs, size_seeds(meta, size), entry_curves(entry, meta["train"]), axes)
    return out


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "model":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


_TRAIN_DEFAULTS = _flat(json.loads(records.dumps(to_dict(TrainConfig()))))


def train_diff(old: dict[str, Any], new: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """The keys (dotted) where two TrainConfig dicts differ; a key one of them lacks counts as the
    trainer's default (a record written before the field existed). ``threads`` never counts: it
    changes the speed of a run, not its numbers."""
    a, b = _flat(json.loads(records.dumps(old))), _flat(json.loads(records.dumps(new)))
    keys = (set(a) | set(b)) - {"threads", *ignore}
    return sorted(k for k in keys if a.get(k, _TRAIN_DEFAULTS.get(k)) != b.get(k, _TRAIN_DEFAULTS.get(k)))


def _curves_text(curves: tuple[Any, ...]) -> str:
    return ", ".join(f"batch {c.batch_size} x {'/'.join(map(str, c.horizons))} steps, warmup {c.warmup_steps}"
                     for c in curves)


def _write_cell(out: Path, train: dict[str, Any], cell: CellSpec) -> Path:
    path = out / cell.size / cell.name
    cells.write_cell(path, cell.size, cell.lr, cell.seed, cell_train(train, cell), **cell.record())
    return path


def prepare_sweep_dir(plan: SweepPlan) -> dict[str, Any]:
    """Create or update DIR/sweep.json and the cell directories; return sweep.json's content.

    A rerun may add sizes, seeds and LRs; a directory whose cells were planned otherwise (other
    shared settings, another batch or horizon of a size, a cell.json whose config differs from
    this plan's) is refused with the settings that differ, before anything is written."""
    path = plan.out / "sweep.json"
    meta = read_sweep_meta(plan.out) if path.exists() else None
    if meta is not None and not (isinstance(meta.get("train"), dict) and isinstance(meta.get("sizes"), dict)):
        raise ConfigError(f"{path} cannot be read (it lacks train or sizes): {REBUILD_SWEEP_JSON}")
    if meta is not None:
        diff = train_diff(meta["train"], plan.train, ignore=CELL_TRAIN_KEYS)
        if diff:
            raise ConfigError(f"{plan.out} holds a sweep with other training settings ({', '.join(diff)}); "
                              "use another --out")
        old_axes = tuple(meta.get("axes") or ())
        if old_axes != plan.axes:
            raise ConfigError(f"{plan.out} holds a sweep whose cell names carry {', '.join(old_axes) or 'lr and seed only'}"
                              f", this one's {', '.join(plan.axes) or 'lr and seed only'} (its batches or horizons "
                              "differ); use another --out")
        for sp in plan.sizes:
            entry = meta["sizes"].get(sp.size)
            old_curves = entry_curves(entry, meta["train"]) if entry and entry.get("lrs") else sp.curves
            if old_curves != sp.curves:
                raise ConfigError(f"{plan.out} holds {sp.size} at other batches or horizons ({_curves_text(old_curves)}"
                                  f"; this plan {_curves_text(sp.curves)}); use another --out")
    else:
        meta = {"created_at": time.time(), "train": plan.train, "sizes": {}, "extensions": [], "axes": list(plan.axes)}
    for cell in plan.cells():
        spec = plan.out / cell.size / cell.name / "cell.json"
        try:
            existing = cells.read_record(spec, dict, None)
        except cells.DamagedRecord:
            continue  # the driver moves it aside and writes it again
        if isinstance(existing, dict) and isinstance(existing.get("train"), dict):
            # the shared settings were compared above; here what the cell sets itself
            shared = tuple(k for k in train_diff(existing["train"], plan.cell_train(cell)) if k not in CELL_TRAIN_KEYS)
            diff = [k for k in train_diff(existing["train"], plan.cell_train(cell), ignore=shared)]
            record = cell.record()
            diff += [key for key in ("trunk", "branch_step") if existing.get(key) != record.get(key)]
            if diff:
                raise ConfigError(f"{spec.parent} was planned with other settings ({', '.join(diff)}); "
                                  "use another --out")
    meta["config"] = to_dict(plan.config)
    meta["max_parallel"] = plan.max_parallel  # what `scaling status --watch` estimates with
    meta.setdefault("extensions", [])
    for sp in plan.sizes:
        entry = meta["sizes"].setdefault(sp.size, {"lrs": [], "extended": []})
        entry.setdefault("lrs", [])
        entry.setdefault("extended", [])
        # a rerun may add seeds, never drop finished ones (older sweep.json: one global count)
        seeds = max(sp.seeds, entry.get("seeds", meta.get("seeds", 0)))
        entry.update(params=sp.params, mm1_lr=sp.mm1_lr, steps=sp.steps, tokens=sp.tokens,
                     batch_size=sp.batch_size, seq_len=sp.seq_len, seeds=seeds,
                     batch_sizes=[c.batch_size for c in sp.curves], curves=[c.to_json() for c in sp.curves])
        entry["lrs"] = sorted(set(entry["lrs"]) | set(sp.lrs))
    cells.write_record(path, meta)
    for cell in meta_cells(meta):
        _write_cell(plan.out, meta["train"], cell)
    return meta


# ------------------------------------------------------------------------------------ results
@dataclasses.dataclass
class SweepResult:
    """What a sweep left: its directory, per-size status, the runs table and edge extensions."""

    dir: Path
    status: list[SizeStatus]
    extensions: list[dict[str, Any]]
    gave_up: list[Path]

    @property
    def runs(self) -> pd.DataFrame:
        """The runs table, read from disk now."""
        return collect_runs(self.dir)


# ------------------------------------------------------------------------------------ the driver
def _edge_extension(meta: dict[str, Any], size: str, states: list[cells.CellState],
                    max_extend: int, label: str | None = None) -> tuple[float | None, str]:
    """The LR to add past an edge of ``size``'s grid, or None, and a sentence saying why, from
    ``states``: the cells of one curve of the size (``label`` names it; default the size)."""
    entry = meta["sizes"][size]
    grid = sorted(set(entry["lrs"]) | set(entry["extended"]))
    by_lr: dict[float, list[float]] = {}
    for st in states:
        if st.status in ("ok", "diverged"):
            by_lr.setdefault(st.lr, []).append(rank_key(st.status, st.loss))
    if not by_lr:
        return None, ""
    mean = {lr: sum(v) / len(v) for lr, v in by_lr.items()}
    best = min(sorted(mean), key=lambda lr: mean[lr])
    if not math.isfinite(mean[best]):
        side = "lower"  # every LR diverged: only smaller ones can help
    elif best == grid[0] and len(grid) > 1:
        side = "lower"
    elif best == grid[-1]:
        side = "upper"
    elif best == grid[0]:
        side = "lower"
    else:
        return None, ""
    done = len(entry["extended"])
    label = label or size
    if done >= max_extend:
        return None, (f"{label}: best lr {best:.2e} is still at the {side} edge after {done} extension(s) "
                      f"(limit {max_extend}); the optimum may lie outside the grid")
    if len(grid) > 1:
        ratio = grid[1] / grid[0] if side == "lower" else grid[-1] / grid[-2]
    else:
        ratio = 10 ** 0.5
    new = round_lr(grid[0] / ratio if side == "lower" else grid[-1] * ratio)
    return new, (f"{label}: best lr {best:.2e} is at the {side} edge of its grid; adding lr {new:.2e} "
                 f"({done + 1}/{max_extend})")


class _Progress:
    """A live bar on a terminal; one line per settled cell otherwise (logs, CI)."""

    def __init__(self, total: int, enabled: bool, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm  # only a terminal shows a bar: logs and CI skip the import

            self.bar = tqdm(total=total, desc="sweep", unit="cell", file=sys.stderr, dynamic_ncols=True)
        self.total, self.done = total, 0

    def update(self, done: int, total: int, running: int, failed: int) -> None:
        self.total = total
        if self.bar is not None:
            self.bar.total = total
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix_str(f"running {running}, failed {failed}")
        self.done = done

    def note(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            self.echo(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_sweep(config: SweepConfig | SweepPlan, *, wait: bool = True, progress: bool = True,
              echo: Callable[[str], None] = print, poll_s: float = 0.5,
              keep_checkpoints: bool | None = None) -> SweepResult:
    """Run (or resume) a sweep until every cell is final or out of retries.

    ``wait=False`` prepares the directory, starts the driver as a detached background process
    (its log in ``DIR/sweep.log``) and returns at once; rerunning the same call later attaches to
    nothing and simply resumes from disk. Returns a :class:`SweepResult` read from disk.

    A directory another live driver runs is refused before anything is written. A full disk is
    one ConfigError naming the file it could not write; every finished cell is kept. Once a
    cell is final its ``checkpoints/`` are removed, unless ``keep_checkpoints`` (None: the sweep
    config's ``keep_checkpoints``, default False), which keeps the newest one; a WSD trunk's
    wait until every branch that starts from one of them is final.
    """
    plan = config if isinstance(config, SweepPlan) else plan_sweep(config)
    if plan.config.executor == "slurm":
        check_slurm()
    if is_replay(plan.config.executor):
        check_replay_plan(plan)  # sizes, batch sizes, step counts and seeds the table records
    parameters = executor_parameters(plan)  # bad resources fail here, before anything is written
    if keep_checkpoints is None:
        keep_checkpoints = plan.config.keep_checkpoints
    try:
        return _run(plan, parameters, wait=wait, progress=progress, echo=echo, poll_s=poll_s,
                    keep_checkpoints=keep_checkpoints)
    except OSError as err:
        if err.errno in DISK_FULL:
            raise ConfigError(f"disk full writing {err.filename or plan.out}: free space and rerun; "
                              "finished cells are kept") from None
        raise


def _run(plan: SweepPlan, parameters: dict[str, Any], *, wait: bool, progress: bool,
         echo: Callable[[str], None], poll_s: float, keep_checkpoints: bool) -> SweepResult:
    fresh = not plan.out.exists()
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "job_id": None, "since": time.time()}
    # the lock first: a refused driver writes nothing (no sweep.json change, no new cell)
    plan.out.mkdir(parents=True, exist_ok=True)
    if not cells.try_lock(plan.out, owner):
        other = cells.lock_owner(plan.out) or {}
        raise ConfigError(f"{plan.out} is being run by another sweep (pid {other.get('pid')} on "
                          f"{other.get('host')}); wait for it or kill it first")
    try:
        meta = prepare_sweep_dir(plan)
        if not wait:
            cells.release_lock(plan.out)  # the background driver takes it
            _spawn_driver(plan, keep_checkpoints)
            return SweepResult(dir=plan.out, status=sweep_status(plan.out, echo), extensions=meta["extensions"],
                               gave_up=[])
        return _drive(plan, meta, parameters, progress=progress, echo=echo, poll_s=poll_s,
                      keep_checkpoints=keep_checkpoints)
    except BaseException:
        if fresh and [p.name for p in plan.out.iterdir()] == ["lock"]:
            cells.release_lock(plan.out)
            plan.out.rmdir()  # nothing was written: leave no directory behind
        raise
    finally:
        cells.release_lock(plan.out)


def _spawn_driver(plan: SweepPlan, keep_checkpoints: bool) -> None:
    config = dataclasses.replace(plan.config, out=str(plan.out))
    cells.write_record(plan.out / "driver.json", to_dict(config))
    log = open(plan.out / "sweep.log", "ab")
    code = ("import sys; from mm1model import records; from mm1model.config import from_dict; "
            "from scaling.sweep import SweepConfig, run_sweep; "
            "run_sweep(from_dict(SweepConfig, records.read_json(sys.argv[1])), progress=False, "
            "keep_checkpoints=sys.argv[2] == 'keep')")
    subprocess.Popen([sys.executable, "-c", code, str(plan.out / "driver.json"), "keep" if keep_checkpoints else "prune"],
                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                     cwd=os.getcwd())
    log.close()


def _record_job_end(path: Path, handle: Any, attempts_before: int, owner: dict[str, Any]) -> None:
    """A job of this driver ended: when it left its cell without an outcome (the job process
    itself died, or never started the cell), record why, as far as the executor can tell."""
    state = cells.cell_state(path)
    if state.status in (*cells.FINAL, "running", "damaged"):
        return
    if not cells.try_lock(path, owner):
        return
    try:
        attempts = cells.read_attempts(path)
        started = len(attempts) > attempts_before
        if started and attempts[-1].get("outcome") is not None:
            return  # the job recorded how its attempt ended
        cause = job_failure(handle, attempts[-1].get("peak_rss_bytes") if started else None)
        if started:
            attempts[-1].update(outcome="failed", error=cause, finished_at=time.time())
        else:
            attempts.append({"attempt": len(attempts) + 1, "host": None, "pid": None, "job_id": str(handle.job_id),
                             "started_at": None, "resumed": cells.has_checkpoint(path), "outcome": "failed",
                             "error": f"the job ended before it started the cell: {cause}",
                             "finished_at": time.time()})
        cells.write_record(path / "attempts.json", attempts)
    except cells.DamagedRecord:
        return  # the next pass finds the cell damaged and moves its files aside
    finally:
        cells.release_lock(path)


def _size_extensions(meta: dict[str, Any], size: str, specs: dict[Path, CellSpec],
                     states: dict[Path, cells.CellState], max_extend: int) -> tuple[list[float], list[str]]:
    """The LRs to add to ``size``'s grid once its cells are settled, and why: each (batch,
    horizon) curve is judged on its own (:func:`_edge_extension`) and an LR one of them asks for
    joins the size's grid, so every curve gets it. A rectangular grid is the simplest rule that
    stays correct under WSD, where a branch's LR needs its trunk at that LR anyway; it costs
    the cells of the curves whose optimum was inside the grid already."""
    curves: dict[tuple[int | None, int | None], list[cells.CellState]] = {}
    for path, spec in specs.items():
        if spec.size == size:
            curves.setdefault((spec.batch_size, spec.steps), []).append(states[path])
    new: list[float] = []
    why: list[str] = []
    for (batch, steps), group in sorted(curves.items(), key=lambda kv: (kv[0][0] or 0, kv[0][1] or 0)):
        label = size if len(curves) == 1 else f"{size} batch {batch} x {steps} steps"
        lr, reason = _edge_extension(meta, size, group, max_extend, label)
        if reason:
            why.append(reason)
        if lr is not None and lr not in new:
            new.append(lr)
    return new, why


def _branch_blocked(path: Path, spec: CellSpec, states: dict[Path, cells.CellState]) -> str | None:
    """Why a WSD branch cannot start yet (None: it can): its trunk is not final. A branch runs
    only after its trunk, which writes the checkpoint it starts from."""
    trunk = states.get(path.parent / str(spec.trunk))
    if trunk is None or trunk.status not in cells.FINAL:
        return f"waits for its trunk {spec.trunk}"
    return None


def _settle_branch(path: Path, spec: CellSpec, owner: dict[str, Any]) -> str | None:
    """A WSD branch whose trunk is final: make it final when the trunk diverged at or before the
    branch's start (without training); None when it can run; else why it cannot (its trunk's
    checkpoint at the branch's start is missing)."""
    trunk = path.parent / str(spec.trunk)
    result = cells.final_result(trunk) or {}
    at = result.get("diverged_at_step") or result.get("steps") or 0
    if result.get("status") == "diverged" and int(at) <= int(spec.branch_step or 0):
        if cells.try_lock(path, owner):
            try:
                cells.settle_diverged_branch(path, cells.read_record(path / "cell.json"), result)
            finally:
                cells.release_lock(path)
        return None
    start = step_dir(trunk, int(spec.branch_step or 0))
    if not start.is_dir():
        return (f"its trunk's checkpoint {start} is missing (removed by hand?): run the trunk again "
                f"(move {trunk} aside) or drop this horizon")
    return None


def _drive(plan: SweepPlan, meta: dict[str, Any], parameters: dict[str, Any], *, progress: bool,
           echo: Callable[[str], None], poll_s: float, keep_checkpoints: bool) -> SweepResult:
    config = plan.config
    if config.executor == "local":
        # warm workers: a cell pays no interpreter start and no imports (scaling.workers)
        executor = WorkerPool(plan.max_parallel, threads=int(plan.train.get("threads") or 1))
    elif is_replay(config.executor):
        executor = replay_executor(config.executor, config.replay_delay_s)
    else:
        executor = make_executor(config.executor, plan.out / ".submitit" / config.executor, parameters)
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "job_id": None, "since": time.time()}
    active: dict[Path, Any] = {}
    attempts_at_submit: dict[Path, int] = {}
    launches: dict[Path, int] = {}
    gave_up: set[Path] = set()
    settled_sizes: set[str] = set()
    job = cells.CellJob(timeout_min=parameters.get("timeout_min") or parameters.get("time"),
                        supervise=True if config.executor == "local" else None)
    bar = _Progress(total=0, enabled=progress, echo=echo)
    reported: set[Path] = set()
    pruned: set[Path] = set()

    def all_cells() -> dict[Path, CellSpec]:
        return {plan.out / cell.size / cell.name: cell for cell in meta_cells(meta)}

    def repair(path: Path, st: cells.CellState) -> cells.CellState:
        """Move a damaged cell's unreadable files aside, rewrite its cell.json, run it again."""
        moved = cells.quarantine(path, list(cells.read_cell_files(path)[3]))
        _write_cell(plan.out, meta["train"], identity[path])
        bar.note(f"warning: {'; '.join(st.damaged)}: moved into {moved}; the cell runs again")
        return cells.cell_state(path)

    def give_up(path: Path, why: str) -> None:
        if path not in gave_up:
            gave_up.add(path)
            bar.note(f"{states[path].label}: {why}")

    # larger sizes first, then the longest cells (a WSD trunk before the branches that wait for
    # it): the longest jobs start early, which shortens the whole sweep
    size_rank = {sp.size: -sp.params for sp in plan.sizes}
    try:
        while True:
            for path, handle in list(active.items()):
                if handle.done():
                    del active[path]
                    _record_job_end(path, handle, attempts_at_submit.pop(path, 0), owner)
            identity = all_cells()
            branches: dict[Path, list[Path]] = {}
            for path, spec in identity.items():
                if spec.trunk:
                    branches.setdefault(path.parent / spec.trunk, []).append(path)
            states = {p: cells.cell_state(p) for p in identity}
            for path, st in states.items():
                if st.status == "damaged" and path not in active:
                    states[path] = repair(path, st)
            todo = []
            for path, st in states.items():
                if path in active or st.status in cells.FINAL or st.status == "running" or path in gave_up:
                    continue
                spec = identity[path]
                if spec.trunk:
                    trunk = path.parent / spec.trunk
                    if trunk in gave_up:
                        give_up(path, f"not run: its trunk {spec.trunk} failed")
                        continue
                    if _branch_blocked(path, spec, states):
                        continue
                    why = _settle_branch(path, spec, owner)
                    if why:
                        give_up(path, f"cannot start: {why}")
                        continue
                    states[path] = st = cells.cell_state(path)
                    if st.status in cells.FINAL or st.status == "running":
                        continue
                # the retry budget is per invocation: after fixing a cause, a rerun tries again
                if launches.get(path, 0) > config.max_retries:
                    give_up(path, f"giving up after {st.attempts} attempt(s): "
                                  f"{st.error or 'no attempt was recorded'}")
                    continue
                todo.append(path)
            for path, st in states.items():
                # a trunk keeps its checkpoints until every branch that starts from one is final
                if (st.status in cells.FINAL and path not in pruned
                        and all(states[b].status in cells.FINAL for b in branches.get(path, []))):
                    pruned.add(path)
                    cells.prune_checkpoints(path, keep_last=keep_checkpoints)
                if path not in reported and (st.status in cells.FINAL or path in gave_up):
                    reported.add(path)
                    loss = f" loss {st.loss:.4f}" if st.loss is not None else ""
                    if bar.bar is None:
                        bar.note(f"[{len(reported)}/{len(states)}] {st.label}: "
                                 f"{st.status if path not in gave_up else 'failed'}{loss}")
            # edge extension: once every cell of a size is settled
            extended = False
            for size in list(meta["sizes"]):
                size_states = [st for p, st in states.items() if st.size == size]
                settled = all(st.status in cells.FINAL or st.path in gave_up for st in size_states)
                if not settled or size in settled_sizes:
                    continue
                new, why = _size_extensions(meta, size, identity, states, config.max_extend)
                for line in why:
                    bar.note(line)
                if not new:
                    settled_sizes.add(size)
                    continue
                meta["sizes"][size]["extended"] += new
                meta["extensions"] += [{"size": size, "lr": lr, "reason": "; ".join(why), "at": time.time()}
                                       for lr in new]
                cells.write_record(plan.out / "sweep.json", meta)
                for cell in meta_cells(meta):
                    if cell.size == size and cell.lr in new:
                        _write_cell(plan.out, meta["train"], cell)
                extended = True
            if extended:
                continue  # the next pass lists the new cells (a branch waits for its new trunk)
            # a job counts from submission (queued) until its cell is settled
            running = sum(1 for st in states.values() if st.status == "running") + sum(
                1 for p in active if states[p].status not in (*cells.FINAL, "running"))
            done = sum(1 for st in states.values() if st.status in cells.FINAL)
            bar.update(done + len(gave_up), len(states), running, len(gave_up))
            todo.sort(key=lambda p: (size_rank.get(identity[p].size, 0), -identity[p].steps * identity[p].batch_size,
                                     identity[p].lr, identity[p].batch_size, identity[p].seed))
            if config.executor == "slurm":
                # one job array, which SLURM throttles to max_parallel (array_parallelism); cells
                # that become ready later (retries, WSD branches) fill the slots that free up
                batch = todo if not active else todo[:max(0, plan.max_parallel - running)]
            elif config.executor == "debug":
                batch = todo[:1]  # in-process: the cell runs to its end at submission
            else:
                batch = todo[:max(0, plan.max_parallel - running)]
            if batch:
                for path in batch:
                    launches[path] = launches.get(path, 0) + 1
                    attempts_at_submit[path] = states[path].attempts
                if config.executor == "slurm":
                    for path, handle in zip(batch, executor.map_array(job, [str(p) for p in batch])):
                        active[path] = handle
                else:
                    for path in batch:
                        active[path] = executor.submit(job, str(path))
                continue
            if running == 0 and all(st.status in cells.FINAL or p in gave_up for p, st in states.items()):
                break  # jobs still tearing down after writing their result need no wait
            if not active and running == 0 and not todo:
                break
            time.sleep(poll_s)
    finally:
        bar.close()
        if isinstance(executor, WorkerPool):
            executor.shutdown()
    return SweepResult(dir=plan.out, status=sweep_status(plan.out, echo), extensions=meta["extensions"],
                       gave_up=sorted(gave_up))


# ------------------------------------------------------------------------------------ adaptive
def _settled_runs(out: Path) -> pd.DataFrame:
    return collect_runs(out, lambda line: None) if (out / "sweep.json").exists() else pd.DataFrame()


def run_adaptive(plan: SweepPlan, *, progress: bool = True, echo: Callable[[str], None] = print,
                 keep_checkpoints: bool | None = None) -> SweepResult:
    """Run (or continue) an adaptive sweep (:mod:`scaling.adaptive`): the sizes smallest first,
    each a round of fixed sweeps (:func:`run_sweep`, so the same executors, records, locks and
    resume) whose LRs :func:`scaling.adaptive.next_step` chooses from the cells on disk, until it
    stops; why is recorded in DIR/adaptive.json. A rerun makes the same decisions from disk."""
    config = plan.config
    result: SweepResult | None = None
    lrs: dict[str, tuple[float, ...]] = {}
    done: list[str] = []
    for sp in sorted(plan.sizes, key=lambda sp: sp.params):
        while True:
            runs = _settled_runs(plan.out)
            meta = read_sweep_meta(plan.out) if (plan.out / "sweep.json").exists() else {"sizes": {}}
            planned = sorted(set(meta["sizes"].get(sp.size, {}).get("lrs", [])))
            mine = runs[runs["size"] == sp.size] if len(runs) else runs
            if not planned:
                before = runs[runs["size"].isin(done)] if len(runs) else runs
                centre, spread = adaptive.size_prior(before, sp.params, math.log(config.center_factor * sp.mm1_lr))
                planned = list(adaptive.first_lrs(centre, spread))
            elif all((mine["lr"] == lr).sum() >= sp.seeds for lr in planned):
                step = adaptive.next_step(mine, planned, config.target_halfwidth, config.max_points,
                                          config.adaptive_bootstrap)
                if step.stopped:
                    adaptive.record_stop(plan.out, sp.size, step, len(planned))
                    echo(f"{sp.size}: stopped after {len(planned)} LRs: {step.stopped}")
                    break
                echo(f"{sp.size}: adding lr {', '.join(f'{lr:.2e}' for lr in step.add)}")
                planned = sorted(set(planned) | set(step.add))
            lrs[sp.size] = tuple(planned)
            sub = dataclasses.replace(config, mode="fixed", sizes=tuple(done + [sp.size]), lrs=(), lrs_by_size=dict(lrs),
                                      max_extend=0, out=str(plan.out))
            result = run_sweep(sub, progress=progress, echo=echo, keep_checkpoints=keep_checkpoints)
        lrs[sp.size] = tuple(planned)
        done.append(sp.size)
    if result is None:
        return SweepResult(dir=plan.out, status=sweep_status(plan.out, echo), extensions=[], gave_up=[])
    return dataclasses.replace(result, status=sweep_status(plan.out, echo))


# ------------------------------------------------------------------------------------ commands
@dataclasses.dataclass
class SweepsResult:
    """What ``scaling sweep`` did: the plan of every arm (one plan for a file without arms) and,
    unless it was a dry run, each sweep's result (``waited`` False: started in the background)."""

    plans: list[SweepPlan]
    sweeps: list[SweepResult]
    dry_run: bool = False
    waited: bool = True

    @property
    def gave_up(self) -> list[Path]:
        """Cells that failed after all their retries, over every arm."""
        return [path for result in self.sweeps for path in result.gave_up]

    @property
    def failure(self) -> str | None:
        """Why the command failed (cells out of retries) and the first cell's cause, or None."""
        failed = self.gave_up
        if not failed:
            return None
        first = cells.cell_state(failed[0])
        return (f"{len(failed)} cell(s) failed after all retries; see attempts.json in each (first: {failed[0]}: "
                f"giving up after {first.attempts} attempt(s): {first.error or 'no attempt was recorded'})")

    def summary(self) -> str:
        """A dry run's cells and resources; else per sweep its status table (when waited) and directory."""
        if self.dry_run:
            return "\n".join(describe_plan(plan) for plan in self.plans)
        lines = []
        for result in self.sweeps:
            if self.waited:
                lines.append(format_status(result.status))
            lines.append(str(result.dir))
        return "\n".join(lines)


def run_sweeps(config_path: str | Path | None, arms: tuple[str, ...] | None = None,
               flags: dict[str, Any] | None = None, *, dry_run: bool = False, no_wait: bool = False,
               echo: Callable[[str], None] = print, keep_checkpoints: bool | None = None) -> SweepsResult:
    """``scaling sweep``: plan the sweep of ``config_path`` with ``flags`` on top (the keyword
    arguments of :func:`load_sweep_config`), then run it, or only plan it with ``dry_run``.

    A file with arms runs ``arms`` (default: its default arms) one after another, each as its own
    sweep in OUT/ARM; every arm is planned, and so checked, before the first one starts.
    ``no_wait`` starts one sweep in the background. ``echo`` gets the progress lines.
    ``keep_checkpoints``: see :func:`run_sweep`."""
    available = sweep_arms(config_path) if config_path else ()
    chosen = tuple(arms) if arms is not None else available
    if arms is not None and not available:
        raise ConfigError("--arms needs a sweep file with [arms.NAME] tables"
                          + (f"; {config_path} has none" if config_path else " (--config)"))
    if len(chosen) > 1 and no_wait:
        raise ConfigError("--no-wait starts one sweep; a file's arms run one after another: drop --no-wait "
                          "or pick one arm with --arms")
    plans = [plan_sweep(load_sweep_config(config_path, arm=arm, **(flags or {}))) for arm in chosen or (None,)]
    if dry_run:
        return SweepsResult(plans=plans, sweeps=[], dry_run=True)
    for plan in plans:  # a dry run prints them in its description
        for warning in plan.warnings:
            echo(f"warning: {warning}")
    if no_wait and any(plan.config.mode == "adaptive" for plan in plans):
        raise ConfigError("--no-wait starts a fixed sweep in the background; an adaptive sweep runs in the foreground")
    sweeps = [run_adaptive(plan, echo=echo, keep_checkpoints=keep_checkpoints) if plan.config.mode == "adaptive"
              else run_sweep(plan, wait=not no_wait, echo=echo, keep_checkpoints=keep_checkpoints) for plan in plans]
    return SweepsResult(plans=plans, sweeps=sweeps, waited=not no_wait)


@dataclasses.dataclass
class StatusResult:
    """Where a sweep or a launch stands, from its files only: ``sizes`` for a sweep directory
    (:func:`scaling.runs.size_status`), ``launch`` for a launch directory
    (:func:`scaling.launch.launch_status`). For a sweep also: ``states`` (every cell's),
    ``warnings`` (one line per damaged cell), ``disk_bytes`` (all files under the directory),
    ``parallel`` (cells at a time, for the ETA)."""

    dir: Path
    sizes: list[SizeStatus] | None = None
    launch: dict[str, Any] | None = None
    states: list[cells.CellState] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    disk_bytes: int | None = None
    parallel: int = 1

    @property
    def failed(self) -> list[cells.CellState]:
        return [st for st in self.states if st.status == "failed"]

    @property
    def done(self) -> bool:
        """Nothing will change without a new driver: no cell is running and none is left, or
        no driver holds the sweep's lock."""
        if self.launch is not None:
            return self.launch["state"] not in ("prepared", "submitted", "running")
        if any(st.status == "running" for st in self.states):
            return False
        return not any(st.status in LEFT for st in self.states) or cells.lock_owner(self.dir) is None

    def eta(self) -> str:
        """One line: the time left, from finished cells' wall times, at the sweep's parallelism."""
        seconds, left = sweep_eta(self.states, self.parallel)
        if left == 0:
            return "done: no cell left"
        if seconds is None:
            return f"ETA unknown until a cell finishes: {left} cell(s) left, {self.parallel} at a time"
        return f"ETA {format_duration(seconds)}: {left} cell(s) left, {self.parallel} at a time"

    def summary(self) -> str:
        """The per-size table, one line per failed cell (why it failed), the disk the sweep
        takes and a warning line per damaged cell; a launch's one-line status."""
        if self.launch is not None:
            return format_launch_status(self.launch)
        lines = [format_status(self.sizes or [])]
        lines += [f"failed {st.label}: giving up after {st.attempts} attempt(s): "
                  f"{st.error or 'no attempt was recorded'}" for st in self.failed]
        if self.disk_bytes is not None:
            lines.append(f"disk: {format_bytes(self.disk_bytes)} under {self.dir}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def run_status(path: str | Path) -> StatusResult:
    """``scaling status``: a sweep's cells per size, or a launch's job and training progress
    (a directory with a ``plan.json`` is a launch)."""
    path = Path(path)
    if (path / "plan.json").exists():
        return StatusResult(dir=path, launch=launch_status(path))
    warnings: list[str] = []
    states = cell_states(path, warnings.append)
    meta = read_sweep_meta(path)
    parallel = meta.get("max_parallel") or (meta.get("config") or {}).get("max_parallel") or 1
    return StatusResult(dir=path, sizes=size_status(states), states=states, warnings=warnings,
                        disk_bytes=disk_bytes(path), parallel=int(parallel))


def watch_status(path: str | Path, interval_s: float = 10.0, *, echo: Callable[[str], None] = print,
                 count: int | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time) -> StatusResult:
    """``scaling status --watch``: show :func:`run_status` with an ETA every ``interval_s``
    seconds until the sweep is done (:attr:`StatusResult.done`), or ``count`` times. Returns
    the last status."""
    shown = 0
    while True:
        status = run_status(path)
        stamp = time.strftime("%H:%M:%S", time.localtime(clock()))
        echo(f"{status.summary()}\n{stamp} {status.eta() if status.launch is None else ''}".rstrip())
        shown += 1
        if status.done or (count is not None and shown >= count):
            return status
        sleep(interval_s)


@dataclasses.dataclass
class CollectResult:
    """A sweep's runs table (:data:`scaling.runs.RUN_COLUMNS`) and the file it was written to, if any."""

    runs: pd.DataFrame
    out: Path | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """The file written and its row count, or (no file) the table as CSV."""
        if self.out is not None:
            return f"{len(self.runs)} runs -> {self.out}"
        text = self.runs.to_csv(index=False)
        return text[:-1] if text.endswith("\n") else text


def run_collect(sweep_dir: str | Path, out: str | Path | None = None) -> CollectResult:
    """``scaling collect``: the runs table of a sweep, the input of ``scaling fit``, written to
    ``out`` (``.csv`` or ``.parquet``, atomically) when given. Damaged cells are left out, one
    line each in ``warnings``."""
    warnings: list[str] = []
    runs = collect_runs(sweep_dir, warnings.append)
    return CollectResult(runs=runs, out=write_runs(runs, out) if out is not None else None, warnings=warnings)
