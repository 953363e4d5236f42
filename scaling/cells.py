"""One sweep cell = one (size, lr, batch, horizon, seed) trainer run in its own directory.

A cell directory is the trainer's run directory (``config.json``, ``metrics.jsonl``,
``result.json``, ``checkpoints/``) plus three files the sweep owns:

* ``cell.json``: what the cell is (size, peak lr, seed) and the full ``TrainConfig`` dict it runs
  (its batch and horizon included); a WSD branch adds ``trunk`` (the name of its trunk's cell,
  in the same size directory) and ``branch_step``, from which :func:`branch_init` makes the run's
  ``init_from`` when its job starts.
* ``attempts.json``: one entry per trainer start (host, pid, job id, trainer pid, outcome, error,
  peak_rss_bytes), so retries and restarts are counted from disk, not from a scheduler's memory.
  ``error`` says why an attempt did not finish: ``exit code N``, ``killed by SIGSEGV``, ``killed
  by SIGKILL, probably out of memory: peak RSS X GB``, the last line of the trainer's traceback,
  a timeout, or (written by the sweep driver, which watched the job die) what the scheduler said.
* ``lock``: present while a process runs the cell; holds the owner's host, pid and job id. Only
  one process runs a cell at a time; a lock whose owner is dead is stale and is taken over
  (:func:`try_lock`, :func:`release_lock`; the sweep driver locks its directory the same way).

:class:`CellJob` is the submitit callable, run through :mod:`scaling.executors`. It is
:class:`submitit.helpers.Checkpointable`, so a SLURM timeout or preemption requeues it and the
trainer resumes from its last checkpoint. A cell of several tasks (one per GPU) joins the
rendezvous of :func:`scaling.executors.export_distributed_environment`, as a launch does.

A file of the cell that cannot be read (a torn ``result.json``, an empty ``cell.json``) makes the
cell ``damaged``, never an exception: :func:`cell_state` says which file and why, and the next
sweep moves those files into ``damaged/<UTC time>/`` inside the cell (:func:`quarantine`) and
runs the cell again. :func:`prune_checkpoints` frees the disk of a final cell.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import submitit

from mm1model import records
from mm1model.checkpoint import PREEMPTION_SIGNALS, Preempted, checkpoint_dir, checkpoint_paths, step_dir
from mm1model.config import ConfigError, from_dict
from mm1model.train import train, warm_data
from mm1model.train_config import TrainConfig
from scaling.executors import (describe_exit, die_with_parent, export_distributed_environment, format_gb,
                               job_environment, last_traceback_line, peak_rss_bytes, signal_name, wait_child)

FINAL = ("ok", "diverged")
# A lock written on another host cannot be checked by pid; its owner touches it this often, and
# one untouched for STALE_LOCK_S is taken to belong to a dead process.
HEARTBEAT_S = 20.0
STALE_LOCK_S = 300.0
# The trainer's peak memory is recorded this soon after it starts, then at doubling intervals up
# to HEARTBEAT_S: a trainer killed early still leaves a number behind.
FIRST_RSS_S = 1.0
# The files of a cell that the sweep reads; one that cannot be read makes the cell damaged.
RECORDS = ("cell.json", "attempts.json", "result.json")
DAMAGED_DIR = "damaged"
# The signal submitit's scheduler sends before a time limit or a preemption (submitit's own setting).
PREEMPT_SIGNAL = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)
_CELL_NAME = re.compile(r"lr=(?P<lr>[-+0-9.eE]+)(?:_bs=(?P<bs>\d+))?(?:_steps=(?P<steps>\d+))?_seed=(?P<seed>\d+)")


class CellName(NamedTuple):
    """What a cell directory's name says: the peak lr and seed, and the global batch (sequences)
    and horizon (steps) where the sweep varies them (None where the name leaves them out)."""

    lr: float
    seed: int
    batch_size: int | None = None
    steps: int | None = None

    @property
    def sort_key(self) -> tuple[float, int, int, int]:
        """lr, batch, steps, seed: the order cells are listed in."""
        return self.lr, self.batch_size or 0, self.steps or 0, self.seed


def cell_name(lr: float, seed: int, batch_size: int | None = None, steps: int | None = None) -> str:
    """Directory name of a cell: ``lr=3.16e-04_seed=0`` (lr to 3 significant digits), with the
    global batch and the horizon where the sweep has several of them:
    ``lr=3.16e-04_bs=16_steps=600_seed=0`` (see :func:`scaling.sweep_plan.name_axes`)."""
    return (f"lr={lr:.2e}" + (f"_bs={batch_size}" if batch_size is not None else "")
            + (f"_steps={steps}" if steps is not None else "") + f"_seed={seed}")


def parse_cell_name(name: str) -> CellName | None:
    """The :class:`CellName` of a cell directory's name (the inverse of :func:`cell_name`, every
    form), None for another name."""
    match = _CELL_NAME.fullmatch(name)
    if not match:
        return None
    return CellName(lr=float(match["lr"]), seed=int(match["seed"]),
                    batch_size=int(match["bs"]) if match["bs"] else None,
                    steps=int(match["steps"]) if match["steps"] else None)


@dataclasses.dataclass(frozen=True)
class CellState:
    """What the files of one cell say about it.

    ``status``: pending | running | ok | diverged | failed | interrupted | damaged. ``failures``
    counts attempts that failed or died without recording an outcome (preemptions do not count).
    ``loss`` is the final validation loss (None unless ok). ``error``: why the last failed
    attempt failed (never None for a failed cell). ``damaged``: one line per file of the cell
    that cannot be read (path and why); such a cell is not final, and the next sweep moves those
    files aside (:func:`quarantine`) and runs it again. ``wall_s``: the trainer's wall time of a
    final cell. ``batch_size`` and ``steps``: the cell's batch and horizon as its directory's name
    says them (None where the sweep has one batch or one horizon, which its names leave out).
    """

    path: Path
    size: str
    lr: float
    seed: int
    status: str
    attempts: int
    failures: int
    loss: float | None
    error: str | None
    damaged: tuple[str, ...] = ()
    wall_s: float | None = None
    batch_size: int | None = None
    steps: int | None = None

    @property
    def label(self) -> str:
        """``100K lr=3.00e-03 seed=0``: the size and what the cell's directory name says (batch
        and horizon included where the sweep varies them), for progress and failure lines."""
        return f"{self.size} {self.path.name.replace('_', ' ')}"


class DamagedRecord(ConfigError):
    """A record file that exists but cannot be read (torn, empty, not JSON, the wrong shape)."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path} cannot be read ({reason})")


_MISSING = object()


def read_record(path: str | os.PathLike, kind: type = dict, default: Any = _MISSING) -> Any:
    """A JSON record of type ``kind`` (dict or list); ``default`` when the file does not exist
    (FileNotFoundError without one). A file that exists but cannot be read raises
    :class:`DamagedRecord` naming it."""
    path = Path(path)
    try:
        value = records.read_json(path)
    except FileNotFoundError:
        if default is _MISSING:
            raise
        return default
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError both are
        empty = path.exists() and path.stat().st_size == 0
        raise DamagedRecord(path, "empty file" if empty else f"not JSON: {str(err).splitlines()[0]}") from None
    except OSError as err:
        raise DamagedRecord(path, err.strerror or type(err).__name__) from None
    if not isinstance(value, kind):
        raise DamagedRecord(path, f"holds a {type(value).__name__} where a {kind.__name__} belongs")
    return value


def write_record(path: str | os.PathLike, obj: Any) -> None:
    """``records.write_json``, with the path on any OSError it raises (a full disk says where)."""
    try:
        records.write_json(path, obj)
    except OSError as err:
        if err.filename is None:
            err.filename = str(path)
        raise


def write_cell(path: Path, size: str, lr: float, seed: int, train: dict[str, Any],
               **extra: Any) -> None:
    """Create the cell's directory and ``cell.json`` (kept as is when it already exists).
    ``extra``: what else the sweep records of the cell (a WSD branch's ``trunk`` and
    ``branch_step``, see :func:`branch_init`)."""
    path = Path(path)
    if not (path / "cell.json").exists():
        write_record(path / "cell.json", {"size": size, "lr": lr, "seed": seed, **extra, "train": train})


def read_attempts(path: Path) -> list[dict[str, Any]]:
    """The cell's attempts ([] before the first); DamagedRecord when attempts.json cannot be read."""
    attempts = read_record(Path(path) / "attempts.json", list, [])
    if not all(isinstance(a, dict) for a in attempts):
        raise DamagedRecord(Path(path) / "attempts.json", "an entry is not a JSON object")
    return attempts


def read_result(path: Path) -> dict[str, Any] | None:
    """The trainer's result.json (None before it wrote one); DamagedRecord when it cannot be read."""
    return read_record(Path(path) / "result.json", dict, None)


def final_result(path: Path) -> dict[str, Any] | None:
    """The cell's result when it is final (ok or diverged) and readable, else None."""
    try:
        result = read_result(path)
    except DamagedRecord:
        return None
    return result if result is not None and result.get("status") in FINAL else None


def has_checkpoint(path: Path) -> bool:
    """Whether the trainer would resume this cell (a temporary file of a torn write does not count)."""
    return bool(checkpoint_paths(Path(path)))


# ------------------------------------------------------------------------------------ WSD branches
def branch_init(path: Path, cell: dict[str, Any]) -> Path | None:
    """The checkpoint a WSD branch cell starts from: its trunk's (``cell.json``'s ``trunk``, a
    cell of the same size directory) at ``branch_step``, the branch's cooldown start. None for
    any other cell. Resolved from the cell's own path when the job runs, as ``run_dir`` is, so a
    sweep directory may move between runs."""
    if not cell.get("trunk"):
        return None
    return step_dir(Path(path).parent / str(cell["trunk"]), int(cell["branch_step"]))


def trainer_config(path: Path, cell: dict[str, Any]) -> TrainConfig:
    """The TrainConfig the cell at ``path`` runs: its ``cell.json``'s ``train``, its run_dir and,
    for a WSD branch, ``init_from`` (:func:`branch_init`)."""
    train = {**cell["train"], "run_dir": str(path)}
    init = branch_init(path, cell)
    if init is not None:
        train["init_from"] = str(init)
    return from_dict(TrainConfig, train)


def settle_diverged_branch(path: Path, cell: dict[str, Any], trunk: dict[str, Any]) -> None:
    """Make a WSD branch final without training it: its trunk (``trunk``: the trunk's
    result.json) diverged at or before the branch's start, so a straight run to the branch's
    horizon diverges at the same step. Writes the branch's ``config.json`` and a ``result.json``
    with status diverged and the trunk's ``diverged_at_step``, as the trainer would have."""
    path = Path(path)
    config = {**cell["train"], "run_dir": str(path), "init_from": str(branch_init(path, cell))}
    at = int(trunk["diverged_at_step"])
    seq_len = int(trunk.get("seq_len") or cell["train"]["data"]["seq_len"])
    batch = int(cell["train"]["batch_size"])
    write_record(path / "config.json", config)
    write_record(path / "result.json", {
        "status": "diverged", "final_val_loss": None, "best_val_loss": None, "val_loss_by_source": {},
        "steps": at, "tokens": at * batch * seq_len, "wall_s": 0.0, "params": trunk.get("params"),
        "lr": cell["lr"], "size": cell["size"], "batch_size": batch, "seq_len": seq_len, "seed": cell["seed"],
        "run_dir": str(path), "diverged_at_step": at,
        "error": f"its trunk {cell['trunk']} diverged at step {at}, at or before this branch's start "
                 f"(step {cell['branch_step']}): not trained"})


def prune_checkpoints(path: Path, keep_last: bool = False) -> None:
    """Free the disk of a final cell: remove its ``checkpoints/`` directory, or with ``keep_last``
    everything in it but the newest complete checkpoint. The trainer never resumes a final run,
    so nothing it needs is lost."""
    folder = checkpoint_dir(Path(path))
    if not folder.is_dir():
        return
    if not keep_last:
        shutil.rmtree(folder, ignore_errors=True)
        return
    keep = set(checkpoint_paths(Path(path))[:1])
    for entry in folder.iterdir():
        if entry in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def quarantine(path: Path, names: Iterable[str]) -> Path | None:
    """Move the files ``names`` of cell ``path`` into ``path/damaged/<UTC time>/`` (never deleted)
    and return that directory; None when none of them exists."""
    path = Path(path)
    present = [name for name in names if (path / name).exists()]
    if not present:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f".{time.time_ns() % 10**9:09d}Z"
    dest = path / DAMAGED_DIR / stamp
    dest.mkdir(parents=True, exist_ok=False)
    for name in present:
        os.replace(path / name, dest / name)
    return dest


# ------------------------------------------------------------------------------------ locks
def _pid_alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        # a zombie (PID 1 in a container may reap late) is dead for our purposes
        return "\nState:\tZ" not in status.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True


def lock_owner(path: Path) -> dict[str, Any] | None:
    """The live owner of a cell's lock, or None when the cell is free (no lock or a stale one)."""
    lock = Path(path) / "lock"
    try:
        owner = records.read_json(lock)
        mtime = lock.stat().st_mtime
    except (FileNotFoundError, ValueError):
        # ValueError: a lock torn by a crash between create and write is stale by definition
        return None
    if owner.get("host") == socket.gethostname():
        return owner if _pid_alive(int(owner["pid"])) else None
    return owner if time.time() - mtime < STALE_LOCK_S else None


def try_lock(path: Path, owner: dict[str, Any]) -> bool:
    """Take the lock of ``path`` (a cell, or a sweep directory) for ``owner`` (host, pid, job id,
    since); False when a live process holds it. A stale lock is taken over; of two processes
    racing for one, exactly one wins."""
    lock = Path(path) / "lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if lock_owner(path) is not None:
                return False
            # stale: remove it and race once more; O_EXCL lets exactly one contender win
            stale = lock.with_name(f"lock.stale.{os.getpid()}")
            try:
                os.replace(lock, stale)
                stale.unlink()
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(records.dumps(owner))
            handle.flush()
            os.fsync(handle.fileno())
        return True
    return False


def release_lock(path: Path) -> None:
    """Remove the lock of ``path`` if this process holds it (another owner's lock is left alone)."""
    lock = Path(path) / "lock"
    try:
        owner = records.read_json(lock)
    except (FileNotFoundError, ValueError):
        return
    if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        lock.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ state
def attempt_cause(attempt: dict[str, Any]) -> str:
    """Why an attempt ended the way it did, one line: its recorded error, or for one that never
    recorded an outcome (its job died hard: kill -9, node loss) what is known of it."""
    if attempt.get("error"):
        return str(attempt["error"])
    if attempt.get("outcome") is None:
        rss = attempt.get("peak_rss_bytes")
        return "the job died without recording an outcome" + (
            f" (trainer's peak RSS {format_gb(rss)} when last recorded)" if rss else "")
    return f"outcome {attempt.get('outcome')}"


def _identity(cell: dict[str, Any] | None) -> tuple[str, float, int] | None:
    try:
        return str(cell["size"]), float(cell["lr"]), int(cell["seed"])
    except (TypeError, KeyError, ValueError):
        return None


def read_cell_files(path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]], dict[str, Any] | None,
                                         dict[str, str]]:
    """The cell's ``cell.json``, attempts and result (None / [] / None where absent or
    unreadable) and, per file that cannot be read, one line naming it and why."""
    path = Path(path)
    damaged: dict[str, str] = {}

    def read(name: str, reader: Callable[[], Any], default: Any) -> Any:
        try:
            return reader()
        except DamagedRecord as err:
            damaged[name] = str(err)
            return default

    cell = read("cell.json", lambda: read_record(path / "cell.json", dict, None), None)
    if "cell.json" not in damaged and _identity(cell) is None:
        damaged["cell.json"] = f"{path / 'cell.json'} cannot be read (" + (
            "missing" if cell is None else "it lacks size, lr or seed") + ")"
    attempts = read("attempts.json", lambda: read_attempts(path), [])
    result = read("result.json", lambda: read_result(path), None)
    return cell, attempts, result, damaged


def cell_state(path: Path) -> CellState:
    """Read one cell from disk. Never asks a scheduler; never raises for a damaged file (the
    cell's status is then ``damaged``, its identity read from its directory's name)."""
    path = Path(path)
    cell, attempts, result, damaged = read_cell_files(path)
    identity = _identity(cell)
    named = parse_cell_name(path.name) or CellName(lr=math.nan, seed=-1)
    if identity is None:
        identity = (path.parent.name, named.lr, named.seed)
    batch_size, steps = named.batch_size, named.steps
    running = lock_owner(path) is not None
    failures = sum(1 for a in attempts if a.get("outcome") == "failed")
    # an attempt without an outcome and without a live lock died hard (kill -9, OOM, node loss)
    crashed = sum(1 for a in attempts if a.get("outcome") is None)
    if not running:
        failures += crashed
    # the latest attempt that says something went wrong: it failed, died, or was stopped (timeout)
    telling = [a for a in attempts if a.get("error") or a.get("outcome") == "failed"
               or (a.get("outcome") is None and not running)]
    error = attempt_cause(telling[-1]) if telling else None
    loss = wall_s = None
    if not damaged and result is not None and result.get("status") in FINAL:
        status = result["status"]
        loss = result.get("final_val_loss") if status == "ok" else None
        wall_s = result.get("wall_s")
    elif running:
        status = "running"
    elif damaged:
        status = "damaged"
    elif attempts and attempts[-1].get("outcome") == "failed":
        status = "failed"
    elif attempts:
        status = "interrupted"
    else:
        status = "pending"
    size, lr, seed = identity
    return CellState(path=path, size=size, lr=lr, seed=seed, status=status, attempts=len(attempts),
                     failures=failures, loss=loss, error=error, damaged=tuple(damaged.values()), wall_s=wall_s,
                     batch_size=batch_size, steps=steps)


# ------------------------------------------------------------------------------------ the job
class _Book:
    """The attempts of a cell as this job keeps them: every change of the current attempt is
    written at once, under one lock (the heartbeat thread and a signal handler write too)."""

    def __init__(self, path: Path, attempts: list[dict[str, Any]]) -> None:
        self.path, self.attempts = path, attempts
        self.lock = threading.RLock()

    def update(self, only_open: bool = False, **fields: Any) -> None:
        with self.lock:
            current = self.attempts[-1]
            if only_open and current.get("outcome") is not None:
                return
            current.update(fields)
            write_record(self.path / "attempts.json", self.attempts)


class CellJob(submitit.helpers.Checkpointable):
    """Run one cell: ``CellJob()(cell_dir)`` -> the cell's final status as a small dict.

    Exceptions of the trainer are recorded in ``attempts.json`` and returned, not raised: the
    sweep decides about retries from disk, and the debug executor would otherwise stop in pdb.
    Returns ``{"status": "busy"}`` when another live process holds the cell's lock.

    Inside a submitit job (local or SLURM) the trainer runs in a child process of the job (a
    fork: nothing is imported twice) and the job records how it ended: ``exit code N``, the
    signal's name (SIGKILL with the trainer's peak RSS, as the kernel counts it), the last line
    of the exception's traceback, or a timeout. While it runs, the job records the trainer's peak
    RSS (``peak_rss_bytes``) at its heartbeat, so a job killed as a whole still leaves a number.
    The debug executor trains in the calling process; ``supervise=True`` forks and supervises
    outside a job too (the local sweep's warm workers). ``timeout_min``: the job's time limit,
    which tells a timeout from a preemption when the scheduler signals.
    """

    def __init__(self, timeout_min: float | None = None, supervise: bool | None = None) -> None:
        self.timeout_min = timeout_min
        # fork and supervise the trainer: inside a submitit job by default; a warm worker of the
        # local sweep (scaling.workers) asks for it too
        self.supervise = supervise
        self._child: int | None = None
        self._book: _Book | None = None
        self._started = time.time()

    def __getstate__(self) -> dict[str, Any]:
        # the live process and book stay in this process
        return {"timeout_min": self.timeout_min, "supervise": self.supervise}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def __call__(self, cell_dir: str) -> dict[str, Any]:
        path = Path(cell_dir)
        self._started = time.time()
        result = final_result(path)
        if result is not None:
            return {"status": result["status"], "path": str(path)}
        env = job_environment()
        if env is not None and env.num_tasks > 1:
            # one process per GPU: all ranks train, rank 0 alone keeps the cell's books
            export_distributed_environment()
            if env.global_rank != 0:
                return self._train(path, read_record(path / "cell.json"))
        owner = {"host": socket.gethostname(), "pid": os.getpid(),
                 "job_id": str(env.job_id) if env is not None else None, "since": time.time()}
        if not try_lock(path, owner):
            return {"status": "busy", "path": str(path)}
        stop = threading.Event()
        try:
            supervise = env is not None if self.supervise is None else self.supervise
            return self._run_locked(path, owner, supervise=supervise, stop=stop)
        finally:
            stop.set()
            release_lock(path)

    def _run_locked(self, path: Path, owner: dict[str, Any], supervise: bool,
                    stop: threading.Event) -> dict[str, Any]:
        # re-read under the lock: the previous holder may have finished between our checks
        result = final_result(path)
        if result is not None:
            return {"status": result["status"], "path": str(path)}
        cell = read_record(path / "cell.json")
        attempts = read_attempts(path)
        attempts.append({"attempt": len(attempts) + 1, "host": owner["host"], "pid": owner["pid"],
                         "job_id": owner["job_id"], "started_at": time.time(),
                         "resumed": has_checkpoint(path), "outcome": None})
        self._book = book = _Book(path, attempts)
        write_record(path / "attempts.json", attempts)
        threads = int(cell["train"].get("threads", 1) or 1)
        # for thread pools that start later (OpenMP's, the trainer's subprocesses): our share of
        # cores; the trainer sizes torch's intra-op pool itself (TrainConfig.threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        start = time.time()
        if supervise:
            outcome, error, rss = self._supervise(path, cell, book, stop)
        else:
            threading.Thread(target=_heartbeat, args=(path / "lock", stop, None, None), daemon=True).start()
            outcome, error, rss = self._in_process(path, cell)
        fields = {"outcome": outcome, "error": error, "finished_at": time.time(), "wall_s": time.time() - start}
        if rss is not None:
            fields["peak_rss_bytes"] = rss
        book.update(only_open=True, **fields)
        final = attempts[-1]
        return {"status": final["outcome"], "path": str(path), "error": final.get("error")}

    def _in_process(self, path: Path, cell: dict[str, Any]) -> tuple[str, str | None, int | None]:
        try:
            status = self._train(path, cell)["status"]
        except Exception:  # noqa: BLE001 - any trainer failure is recorded, then retried
            trace = traceback.format_exc()
            records.write_text(path / "error.log", trace)
            return "failed", last_traceback_line(trace), None
        return (status, None, None) if status in FINAL else ("failed", f"trainer returned status {status}", None)

    def _supervise(self, path: Path, cell: dict[str, Any], book: _Book,
                   stop: threading.Event) -> tuple[str, str | None, int | None]:
        if self.supervise:  # a warm worker: its corpus index and validation set outlive the cell
            warm_data(trainer_config(path, cell))
        read_end, write_end = os.pipe()
        parent = os.getpid()
        child = os.fork()
        if child == 0:  # the trainer's process
            os.close(read_end)
            os._exit(self._trainer_process(path, cell, write_end, parent))
        os.close(write_end)
        self._child = child
        book.update(trainer_pid=child)
        threading.Thread(target=_heartbeat, args=(path / "lock", stop, book, child), daemon=True).start()
        try:
            status, rss = wait_child(child)
        finally:
            self._child = None
        with os.fdopen(read_end) as pipe:
            said = pipe.read()
        try:
            report = json.loads(said) if said.strip() else {}
        except ValueError:  # the trainer died while it reported
            report = {}
        if os.WIFSIGNALED(status):
            return "failed", describe_exit(signum=os.WTERMSIG(status), peak_rss_bytes=rss), rss
        if report.get("status") == "preempted":
            return "preempted", report.get("error"), rss
        if report.get("status") in FINAL:
            return report["status"], None, rss
        if report.get("error"):
            return "failed", report["error"], rss
        return "failed", describe_exit(returncode=os.WEXITSTATUS(status), peak_rss_bytes=rss), rss

    def _trainer_process(self, path: Path, cell: dict[str, Any], report_fd: int, parent: int) -> int:
        """The forked trainer: train, tell the job how it went through ``report_fd``, exit."""
        code, report = 1, {}
        try:
            die_with_parent(parent)
            # the trainer hands a preemption signal to the handler before its own: here the
            # default, so it exits after its checkpoint and the job (which got the signal too,
            # or forwards it) requeues
            for sig in PREEMPTION_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            status = self._train(path, cell)["status"]
            code, report = 0, {"status": status}
            if status not in FINAL:
                code, report = 1, {"status": "failed", "error": f"trainer returned status {status}"}
        except Preempted as stop:
            code, report = int(stop.code), {"status": "preempted",
                                            "error": f"stopped by {signal_name(stop.signum)} after a checkpoint"}
        except BaseException:  # noqa: BLE001 - whatever ends the trainer is reported
            trace = traceback.format_exc()
            try:
                records.write_text(path / "error.log", trace)
            except OSError:
                pass
            report = {"status": "failed", "error": last_traceback_line(trace)}
        finally:
            try:
                os.write(report_fd, json.dumps(report).encode())
                os.close(report_fd)
                sys.stdout.flush()
                sys.stderr.flush()
            except OSError:
                pass
        return code

    @staticmethod
    def _train(path: Path, cell: dict[str, Any]) -> dict[str, Any]:
        outcome = train(trainer_config(path, cell))
        return {"status": outcome.status, "path": str(path)}

    def _timed_out(self) -> bool:
        # submitit's own rule: a signal after 80% of the limit (or within 10 minutes of it) is the limit's
        if not self.timeout_min:
            return False
        limit = self.timeout_min * 60
        return time.time() - self._started >= min(0.8 * limit, limit - 600)

    def checkpoint(self, cell_dir: str) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on timeout/preemption: stop the trainer at a checkpoint, mark the
        attempt, free the cell, requeue.

        The trainer checkpoints at its next step boundary when it gets the signal (forwarded here
        to the trainer's process) and every ``checkpoint_interval`` steps; the requeued job
        resumes from the last of those.
        """
        path = Path(cell_dir)
        cause = (f"timed out: the job reached its time limit ({self.timeout_min:g} min); requeued"
                 if self._timed_out() else "preempted by the scheduler; requeued")
        child, rss = self._child, None
        if child is not None:
            try:
                os.kill(child, PREEMPT_SIGNAL)
            except ProcessLookupError:
                pass
            _, rss = wait_child(child)
            self._child = None
        if self._book is not None:
            fields = {"outcome": "preempted", "error": cause, "finished_at": time.time()}
            if rss is not None:
                fields["peak_rss_bytes"] = rss
            self._book.update(only_open=True, **fields)
        else:
            attempts = read_attempts(path)
            if attempts and attempts[-1].get("outcome") is None and attempts[-1].get("pid") == os.getpid():
                attempts[-1].update(outcome="preempted", error=cause, finished_at=time.time())
                write_record(path / "attempts.json", attempts)
        release_lock(path)
        return submitit.helpers.DelayedSubmission(self, cell_dir)


def _heartbeat(lock: Path, stop: threading.Event, book: _Book | None, child: int | None) -> None:
    """Touch the lock every HEARTBEAT_S; record the trainer's peak RSS, soon after its start and
    then at doubling intervals up to HEARTBEAT_S."""
    wait, last_touch, recorded = FIRST_RSS_S, time.time(), 0
    while not stop.wait(wait):
        if book is not None and child is not None:
            rss = peak_rss_bytes(child)
            if rss is not None and rss > recorded * 1.05:
                recorded = rss
                try:
                    book.update(only_open=True, peak_rss_bytes=rss)
                except OSError:
                    pass
        if time.time() - last_touch >= HEARTBEAT_S or book is None:
            try:
                os.utime(lock)
            except FileNotFoundError:
                return
            last_touch = time.time()
        wait = min(2 * wait, HEARTBEAT_S) if book is not None else HEARTBEAT_S
