"""Sharded checkpoints (torch.distributed.checkpoint) and preemption for the trainer.

A checkpoint is a directory ``checkpoints/step_XXXXXXXX/``:

* ``__R_0.distcp``: rank R's shards of the model and the AdamW state, written by every rank in
  parallel (FSDP2 keeps them sharded; nobody gathers the model), and ``.metadata``, DCP's index of
  every shard, written by the coordinator after all ranks are done;
* ``trainer.json``: everything that is not a tensor, as JSON: the step and loop state, the
  optimizer's parameter groups (LR multipliers, betas, ...), every data lane's state (with loader
  workers, the state of each worker's sub-stream as of the last step trained:
  :meth:`mm1model.data.loader.LaneBatches.lane_states`) and every rank's RNG states.

The trainer keeps its newest ``keep`` checkpoints plus those of its ``save_steps``, which are
never rotated out (a wsd trunk's, for shorter horizons to branch from: :func:`load_checkpoint_from`).

It is written as ``.step_XXXXXXXX.partial/`` and renamed into place by rank 0 once every rank has
finished and ``trainer.json`` is on disk, so a kill mid-save leaves the previous checkpoint
usable and a reader never sees half of one. Loading reshards: DCP reads whatever slices this
run's ranks own, so a checkpoint saved by 4 processes resumes in 2 or 1 (the data lanes are the
same at any world size; RNG states are restored only at the world size that saved them).

Nothing executes on load. ``trainer.json`` is JSON; the tensor files are read with
``torch.load(weights_only=True)`` by DCP; DCP's ``.metadata`` is a pickle, so it is read through
an unpickler that admits only DCP's own metadata classes (:class:`SafeReader`). A checkpoint in
the old single-file pickle format (``step_XXXXXXXX.pt``) is refused in one line naming the file.

Preemption signals only set a flag: the trainer checkpoints at the next step boundary, then hands
the signal on to whoever handled it before (submitit's requeue handler in a sweep or launch job).
On GPU interval checkpoints are written asynchronously (DCP's ``async_save``: the state is staged
to host memory and written by a background thread while training continues); the rename happens
when the write has finished, at a later step boundary or at the end of the run.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from mm1model import records
from mm1model.accelerator import rng_state
from mm1model.config import ConfigError
from mm1model.data.loader import LaneBatches
from mm1model.distributed import Dist, gather_objects

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
CHECKPOINT_FORMAT = 2
TRAINER_FILE = "trainer.json"


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


# ------------------------------------------------------------------------------------ safe reading
# The only globals DCP's .metadata pickle may name: its own metadata classes, torch.Size, dtypes
# and layouts by name, and paths. Anything else is refused before it can run.
_METADATA_MODULES = ("torch.distributed.checkpoint.metadata",)
_METADATA_GLOBALS = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
                     ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("collections", "OrderedDict")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = (module in _METADATA_MODULES or (module, name) in _METADATA_GLOBALS
                   or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)))
        if not allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not a checkpoint metadata class")
        return super().find_class(module, name)


class SafeReader(FileSystemReader):
    """DCP's file reader, with ``.metadata`` unpickled through an allowlist of DCP's own classes."""

    def read_metadata(self, *args: Any, **kwargs: Any):
        path = Path(self.path) / ".metadata"
        with open(path, "rb") as handle:
            metadata = _MetadataUnpickler(handle).load()
        # what FileSystemReader.read_metadata does after unpickling
        if getattr(metadata, "storage_meta", None) is None:
            from torch.distributed.checkpoint.metadata import StorageMeta  # noqa: PLC0415 (torch's, not ours)

            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


# ------------------------------------------------------------------------------------ layout
def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dir(run_dir: Path, step: int) -> Path:
    """Where a run's checkpoint after ``step`` updates lives (it may not exist)."""
    return checkpoint_dir(run_dir) / f"step_{step:08d}"


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """Complete checkpoints, newest first (a ``.partial`` directory of an interrupted save is not one)."""
    return sorted((p for p in checkpoint_dir(run_dir).glob("step_*") if p.is_dir()), reverse=True)


def legacy_checkpoints(run_dir: Path) -> list[Path]:
    """Single-file pickle checkpoints of the old format, which are never loaded."""
    return sorted(checkpoint_dir(run_dir).glob("step_*.pt"))


def checkpoint_keys(path: Path) -> list[str]:
    """The tensor keys a checkpoint holds (``model.<name>``, ``optimizer.<name>.<state>``), from its metadata."""
    return sorted(SafeReader(str(path)).read_metadata().state_dict_metadata)


def read_trainer_state(path: Path) -> dict[str, Any]:
    """A checkpoint's ``trainer.json``: step, loop state, parameter groups, lanes, RNG states."""
    return records.read_json(Path(path) / TRAINER_FILE)


# ------------------------------------------------------------------------------------ saving
def _no_dist() -> bool:
    return not (dist.is_available() and dist.is_initialized())


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns on every single-process save and load that it assumes one process: we mean it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is .*single process")
        yield


def _tensor_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, list]:
    """(tensors for DCP, the optimizer's parameter groups for JSON). Under FSDP2 the tensors are
    DTensors: each rank holds, and writes, its own shards."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optimizer": optim_sd["state"]}, optim_sd["param_groups"]


class Checkpointer:
    """Writes a run's checkpoints (see the module docstring); one per training process.

    ``keep``: how many of the newest checkpoints to keep; those of ``kept_steps`` are kept on top
    and do not count. ``async_save``: write interval checkpoints in the background (the default
    on GPU). A save requested while the previous one is still being written waits for it first,
    so at most one is in flight; :meth:`finish` waits for the last one (call it before the process ends).
    """

    def __init__(self, run_dir: Path, ddp: Dist, keep: int, async_save: bool = False,
                 kept_steps: tuple[int, ...] = ()) -> None:
        self.run_dir, self.ddp, self.keep, self.async_save = Path(run_dir), ddp, keep, async_save
        self.kept = {step_dir(self.run_dir, s) for s in kept_steps}
        self._pending: tuple[Any, Path, Path] | None = None

    def save(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
             lanes: LaneBatches, blocking: bool = False) -> Path:
        """Collective: every rank calls it. Returns the checkpoint's final path."""
        self.finish()
        step = int(state["step"])
        final = step_dir(self.run_dir, step)
        partial = checkpoint_dir(self.run_dir) / f".step_{step:08d}.partial"
        if self.ddp.is_main:
            shutil.rmtree(partial, ignore_errors=True)  # a torn save of the same step
            partial.mkdir(parents=True)
        self._barrier()
        tensors, param_groups = _tensor_state(model, optimizer)
        lane_states: dict[str, Any] = {}
        for part in gather_objects(lanes.lane_states(), self.ddp):
            lane_states.update({str(i): s for i, s in part.items()})
        trainer = {"format": CHECKPOINT_FORMAT, **state, "world_size": self.ddp.world_size,
                   "param_groups": param_groups, "lanes": lane_states, "rng": gather_objects(rng_state(), self.ddp)}
        writer = FileSystemWriter(str(partial), single_file_per_rank=True)
        if self.async_save and not blocking:
            with _single_process_quiet():
                future = dcp.async_save(tensors, storage_writer=writer, no_dist=_no_dist())
            if self.ddp.is_main:
                records.write_json(partial / TRAINER_FILE, trainer)
            self._pending = (future, partial, final)
        else:
            with _single_process_quiet():
                dcp.save(tensors, storage_writer=writer, no_dist=_no_dist())
            if self.ddp.is_main:
                records.write_json(partial / TRAINER_FILE, trainer)
            self._commit(partial, final)
        return final

    def finish(self) -> None:
        """Wait for an asynchronous save in flight, then put it in place."""
        if self._pending is None:
            return
        future, partial, final = self._pending
        self._pending = None
        future.result()
        self._commit(partial, final)

    def _commit(self, partial: Path, final: Path) -> None:
        # every rank's shards and the coordinator's .metadata are written before the rename
        self._barrier()
        if self.ddp.is_main:
            if final.exists():  # the same step saved again after a resume: replace it
                old = final.with_name(final.name + ".old")
                os.replace(final, old)
                shutil.rmtree(old)
            os.replace(partial, final)
            for stale in [p for p in checkpoint_paths(self.run_dir) if p not in self.kept][self.keep:]:
                shutil.rmtree(stale, ignore_errors=True)
        self._barrier()

    def _barrier(self) -> None:
        if self.ddp.world_size > 1:
            dist.barrier()


# ------------------------------------------------------------------------------------ loading
class UnreadableCheckpoint(Exception):
    """A checkpoint directory that does not load: ``reason`` is the underlying error in one line."""

    def __init__(self, path: Path, err: BaseException) -> None:
        # CheckpointException (DCP's, a BaseException) wraps each rank's read error: name the first
        if isinstance(err, CheckpointException) and err.failures:
            err = next(iter(err.failures.values()))[0]
        self.path = Path(path)
        self.reason = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}"
        super().__init__(f"checkpoint {path} is unreadable ({self.reason})")


def load_checkpoint_from(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Collective: load the checkpoint directory ``path`` into ``model`` and ``optimizer`` (in
    place, resharded to this run's ranks, the optimizer's parameter groups included) and return
    its ``trainer.json``. Raises :class:`UnreadableCheckpoint` for anything that does not load
    (a missing or torn file, another format, tensors of another model), possibly after loading
    part of it: rebuild the model and optimizer before using them again."""
    try:
        trainer = read_trainer_state(path)
        if trainer.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {trainer.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        tensors, _ = _tensor_state(model, optimizer)
        with _single_process_quiet():
            dcp.load(tensors, storage_reader=SafeReader(str(path)), no_dist=_no_dist())
        set_state_dict(model, optimizer, model_state_dict=tensors["model"],
                       optim_state_dict={"state": tensors["optimizer"], "param_groups": trainer["param_groups"]})
    except (Exception, CheckpointException) as err:  # noqa: BLE001 - every way of not loading is reported alike
        raise UnreadableCheckpoint(path, err) from err
    return trainer


def load_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Collective: load the newest of a run's checkpoints that loads into ``model`` and
    ``optimizer`` (:func:`load_checkpoint_from`) and return its ``trainer.json``; a corrupt one
    is skipped with a RuntimeWarning; None when there is none. An old-format pickle checkpoint is
    a ConfigError naming the file."""
    legacy = legacy_checkpoints(run_dir)
    if legacy:
        raise ConfigError(f"{legacy[-1]} is a checkpoint in the old single-file pickle format: it is not loaded, "
                          "because unpickling it could run code; delete it to restart the run from step 0")
    for path in checkpoint_paths(run_dir):
        try:
            return load_checkpoint_from(path, model, optimizer)
        except UnreadableCheckpoint as err:
            warnings.warn(f"{err}; falling back to the one before it", RuntimeWarning, stacklevel=2)
    return None
