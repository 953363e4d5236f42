"""Checkpoints and preemption for the trainer.

A checkpoint is written to a temporary name and renamed (``mm1model.records.save_torch``), so a
reader never sees half a file; a corrupt newest one is skipped with a warning. Preemption
signals only set a flag: the trainer checkpoints at the next step boundary, then hands the signal
on to whoever handled it before (submitit's requeue handler in a sweep or launch job).
"""
from __future__ import annotations

import random
import signal
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mm1model import records
from mm1model.data import PackedStream
from mm1model.distributed import Dist, gather_objects

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Preemption:
    """Turns SIGTERM/SIGUSR1/SIGUSR2 into a flag read at the next step boundary.

    The trainer checkpoints, then :meth:`chain` hands the signal to the handler that was
    installed before ours (submitit's requeue handler in a sweep or launch job). With no such
    handler the process exits with 128 + signal, leaving no final result.json: it is resumable.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in PREEMPTION_SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received.append(signum)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}

    def chain(self) -> None:
        """Deliver each received signal to the previous handler (after our checkpoint)."""
        received, self.received = self.received, []
        for signum in dict.fromkeys(received):
            previous = self.previous.get(signum, signal.SIG_DFL)
            if callable(previous):
                previous(signum, None)
            elif previous == signal.SIG_IGN:
                continue
            else:
                raise Preempted(signum)


class Preempted(SystemExit):
    """Raised after the preemption checkpoint when no earlier handler took the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


# ------------------------------------------------------------------------------------ checkpoints
def _checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """Checkpoint files, newest first (temporary files of an interrupted write excluded)."""
    return sorted(_checkpoint_dir(run_dir).glob("step_*.pt"), reverse=True)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], lanes: dict[int, PackedStream], ddp: Dist, keep: int) -> None:
    """Collective: every rank calls it; rank 0 writes ``checkpoints/step_<step>.pt`` atomically.

    Holds full (unsharded) model and optimizer state dicts, so a run can resume at another
    world size; the data lanes' sampler states and each rank's RNG states ride along.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    lane_states = {}
    for part in gather_objects({i: s.state_dict() for i, s in lanes.items()}, ddp):
        lane_states.update(part)
    rng = gather_objects(rng_state(), ddp)
    if ddp.is_main:
        path = _checkpoint_dir(run_dir) / f"step_{state['step']:08d}.pt"
        records.save_torch(path, {"format": 1, **state, "model": model_sd, "optimizer": optim_sd,
                                  "lanes": lane_states, "rng": rng, "world_size": ddp.world_size})
        for old in checkpoint_paths(run_dir)[keep:]:
            old.unlink(missing_ok=True)
    if ddp.world_size > 1:
        dist.barrier()


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The newest checkpoint that loads; a corrupt one is skipped with a RuntimeWarning."""
    for path in checkpoint_paths(run_dir):
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
            if not isinstance(ckpt, dict) or "step" not in ckpt or "model" not in ckpt:
                raise ValueError("not a trainer checkpoint")
            return ckpt
        except Exception as err:  # noqa: BLE001 - any unreadable file is skipped the same way
            warnings.warn(f"checkpoint {path} is unreadable ({type(err).__name__}: {err}); "
                          "falling back to the one before it", RuntimeWarning, stacklevel=2)
    return None
