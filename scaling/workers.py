"""Warm worker processes for a sweep on this machine: imports paid once per worker, not per cell.

A cell on ``submitit.LocalExecutor`` is a fresh Python process: importing torch, the trainer
and the corpus readers took most of the 2.7 s from submit to a cell's first optimizer step
(``python -m scaling.overhead``). :class:`WorkerPool` keeps ``workers`` processes (spawned, so no
thread state is inherited), each of which imports the trainer once and then runs cells one
after another; every cell still keeps its own records, lock, attempts and resume (they live in
the cell directory, written by :class:`scaling.cells.CellJob` as before), so a rerun, a kill -9
of the driver or a crashed cell behave as with one process per cell. A worker whose driver died
finishes the cell it is running (the cell's lock says it is alive) and then exits.
"""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable

# set while a worker runs a cell: an orphaned worker waits for it before it exits
_BUSY = threading.Event()


def _exit_when_orphaned(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent and not _BUSY.is_set():
            os._exit(0)


def _warm_up(threads: int, parent: int) -> None:
    """Runs once in each worker: its thread budget, the imports every cell needs, an orphan watch."""
    # before torch is imported: intra-op pools sized to this worker's share of the cores
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch  # noqa: PLC0415 - the point of a warm worker: torch and the trainer, once

    import torch.utils.tensorboard  # noqa: F401,PLC0415 - the trainer's event files: 0.5 s of imports

    import mm1model.train  # noqa: F401,PLC0415

    # the worker itself computes on one thread (its data caches), so no OpenMP pool exists when it
    # forks a cell's trainer, which then sizes its own pool (GNU OpenMP is not fork-safe)
    torch.set_num_threads(1)
    # the first optimizer a process builds imports torch._dynamo (1.7 s here): pay it now
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])

    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()


def _run(fn: Callable[..., Any], args: tuple) -> Any:
    _BUSY.set()
    try:
        return fn(*args)
    finally:
        _BUSY.clear()


class WorkerPool:
    """The local sweep executor: ``submit(fn, *args)`` runs ``fn(*args)`` in one of ``workers``
    warm processes and returns a future (``.done()``, ``.result()``)."""

    def __init__(self, workers: int, threads: int = 1) -> None:
        self.workers = workers
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_warm_up, initargs=(threads, os.getpid()))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self._pool.submit(_run, fn, args)

    def shutdown(self) -> None:
        """Stop taking cells; idle workers exit, a running cell finishes first."""
        self._pool.shutdown(wait=False, cancel_futures=True)
