"""One sweep cell = one (size, lr, seed) trainer run in its own directory.

A cell directory is the trainer's run directory (``config.json``, ``metrics.jsonl``,
``result.json``, ``checkpoints/``) plus three files the sweep owns:

* ``cell.json``: what the cell is (size, peak lr, seed) and the full ``TrainConfig`` dict it runs.
* ``attempts.json``: one entry per trainer start (host, pid, job id, outcome, error), so retries
  and restarts are counted from disk, not from a scheduler's memory.
* ``lock``: present while a process runs the cell; holds the owner's host, pid and job id. Only
  one process runs a cell at a time; a lock whose owner is dead is stale and is taken over
  (:func:`try_lock`, :func:`release_lock`; the sweep driver locks its directory the same way).

:class:`CellJob` is the submitit callable, run through :mod:`scaling.executors`. It is
:class:`submitit.helpers.Checkpointable`, so a SLURM timeout or preemption requeues it and the
trainer resumes from its last checkpoint. A cell of several tasks (one per GPU) joins the
rendezvous of :func:`scaling.executors.export_distributed_environment`, as a launch does.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import submitit

from mm1model import records
from mm1model.checkpoint import checkpoint_paths
from mm1model.config import from_dict
from mm1model.train import train
from mm1model.train_config import TrainConfig
from scaling.executors import export_distributed_environment, job_environment

FINAL = ("ok", "diverged")
# A lock written on another host cannot be checked by pid; its owner touches it this often, and
# one untouched for STALE_LOCK_S is taken to belong to a dead process.
HEARTBEAT_S = 20.0
STALE_LOCK_S = 300.0


def cell_name(lr: float, seed: int) -> str:
    """Directory name of a cell, e.g. ``lr=3.16e-04_seed=0`` (lr to 3 significant digits)."""
    return f"lr={lr:.2e}_seed={seed}"


@dataclasses.dataclass(frozen=True)
class CellState:
    """What the files of one cell say about it.

    ``status``: pending | running | ok | diverged | failed | interrupted. ``failures`` counts
    attempts that failed or died without recording an outcome (preemptions do not count).
    ``loss`` is the final validation loss (None unless ok).
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


def write_cell(path: Path, size: str, lr: float, seed: int, train: dict[str, Any]) -> None:
    """Create the cell's directory and ``cell.json`` (kept as is when it already exists)."""
    path = Path(path)
    if not (path / "cell.json").exists():
        records.write_json(path / "cell.json", {"size": size, "lr": lr, "seed": seed, "train": train})


def read_attempts(path: Path) -> list[dict[str, Any]]:
    try:
        return records.read_json(Path(path) / "attempts.json")
    except FileNotFoundError:
        return []


def read_result(path: Path) -> dict[str, Any] | None:
    try:
        return records.read_json(Path(path) / "result.json")
    except FileNotFoundError:
        return None


def has_checkpoint(path: Path) -> bool:
    """Whether the trainer would resume this cell (a temporary file of a torn write does not count)."""
    return bool(checkpoint_paths(Path(path)))


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
def cell_state(path: Path) -> CellState:
    """Read one cell from disk. Never asks a scheduler."""
    path = Path(path)
    cell = records.read_json(path / "cell.json")
    attempts = read_attempts(path)
    result = read_result(path)
    running = lock_owner(path) is not None
    failures = sum(1 for a in attempts if a.get("outcome") == "failed")
    # an attempt without an outcome and without a live lock died hard (kill -9, OOM, node loss)
    crashed = sum(1 for a in attempts if a.get("outcome") is None)
    if not running:
        failures += crashed
    error = next((a.get("error") for a in reversed(attempts) if a.get("error")), None)
    loss = None
    if result is not None and result.get("status") in FINAL:
        status = result["status"]
        loss = result.get("final_val_loss") if status == "ok" else None
    elif running:
        status = "running"
    elif attempts and attempts[-1].get("outcome") == "failed":
        status = "failed"
    elif attempts:
        status = "interrupted"
    else:
        status = "pending"
    return CellState(path=path, size=cell["size"], lr=float(cell["lr"]), seed=int(cell["seed"]),
                     status=status, attempts=len(attempts), failures=failures, loss=loss, error=error)


# ------------------------------------------------------------------------------------ the job
class CellJob(submitit.helpers.Checkpointable):
    """Run one cell: ``CellJob()(cell_dir)`` -> the cell's final status as a small dict.

    Exceptions of the trainer are recorded in ``attempts.json`` and returned, not raised: the
    sweep decides about retries from disk, and the debug executor would otherwise stop in pdb.
    Returns ``{"status": "busy"}`` when another live process holds the cell's lock.
    """

    def __call__(self, cell_dir: str) -> dict[str, Any]:
        path = Path(cell_dir)
        result = read_result(path)
        if result is not None and result.get("status") in FINAL:
            return {"status": result["status"], "path": str(path)}
        env = job_environment()
        if env is not None and env.num_tasks > 1:
            # one process per GPU: all ranks train, rank 0 alone keeps the cell's books
            export_distributed_environment()
            if env.global_rank != 0:
                return self._train(path, records.read_json(path / "cell.json"))
        owner = {"host": socket.gethostname(), "pid": os.getpid(),
                 "job_id": str(env.job_id) if env is not None else None, "since": time.time()}
        if not try_lock(path, owner):
            return {"status": "busy", "path": str(path)}
        stop = threading.Event()
        beat = threading.Thread(target=_heartbeat, args=(path / "lock", stop), daemon=True)
        beat.start()
        try:
            return self._run_locked(path, owner)
        finally:
            stop.set()
            release_lock(path)

    def _run_locked(self, path: Path, owner: dict[str, Any]) -> dict[str, Any]:
        # re-read under the lock: the previous holder may have finished between our checks
        result = read_result(path)
        if result is not None and result.get("status") in FINAL:
            return {"status": result["status"], "path": str(path)}
        cell = records.read_json(path / "cell.json")
        attempts = read_attempts(path)
        attempts.append({"attempt": len(attempts) + 1, "host": owner["host"], "pid": owner["pid"],
                         "job_id": owner["job_id"], "started_at": time.time(),
                         "resumed": has_checkpoint(path), "outcome": None})
        records.write_json(path / "attempts.json", attempts)
        threads = int(cell["train"].get("threads", 1) or 1)
        # for thread pools that start later (OpenMP's, the trainer's subprocesses): our share of
        # cores; the trainer sizes torch's intra-op pool itself (TrainConfig.threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        start = time.time()
        try:
            status = self._train(path, cell)["status"]
            error = None if status in FINAL else f"trainer returned status {status}"
        except Exception as err:  # noqa: BLE001 - any trainer failure is recorded, then retried
            status, error = "failed", f"{type(err).__name__}: {err}".splitlines()[0][:500]
            records.write_text(path / "error.log", traceback.format_exc())
        attempts[-1].update(outcome=status if status in FINAL else "failed", error=error,
                            finished_at=time.time(), wall_s=time.time() - start)
        records.write_json(path / "attempts.json", attempts)
        return {"status": attempts[-1]["outcome"], "path": str(path), "error": error}

    @staticmethod
    def _train(path: Path, cell: dict[str, Any]) -> dict[str, Any]:
        outcome = train(from_dict(TrainConfig, {**cell["train"], "run_dir": str(path)}))
        return {"status": outcome.status, "path": str(path)}

    def checkpoint(self, cell_dir: str) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on timeout/preemption: mark the attempt, free the cell, requeue.

        The trainer itself checkpoints every ``checkpoint_interval`` steps; the requeued job
        resumes from the last of those.
        """
        path = Path(cell_dir)
        attempts = read_attempts(path)
        if attempts and attempts[-1].get("outcome") is None and attempts[-1].get("pid") == os.getpid():
            attempts[-1].update(outcome="preempted", finished_at=time.time())
            records.write_json(path / "attempts.json", attempts)
        release_lock(path)
        return submitit.helpers.DelayedSubmission(self, cell_dir)


def _heartbeat(lock: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            os.utime(lock)
        except FileNotFoundError:
            return
