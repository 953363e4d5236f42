"""The trainer's micro-batches: its data lanes, in the training process or in loader workers.

A rank runs the data lanes ``my_lanes`` of ``n_lanes`` (one micro-batch of each per step; see
:mod:`mm1model.train`). :class:`LaneBatches` gives one step at a time: the list of the rank's
micro-batches, in lane order.

* ``num_workers = 0``: lane ``i`` is one :class:`~mm1model.data.stream.PackedStream`
  (``rank=i, world_size=n_lanes``), packed in the training process before each step.
* ``num_workers = W > 0``: each lane is split into ``W`` sub-streams (``PackedStream(rank=i,
  world_size=n_lanes, worker=w, num_workers=W)``; together they read every record of the lane
  once per epoch) and a ``torch.utils.data.DataLoader`` with ``W`` worker processes packs whole
  steps ahead of the GPU: step ``t`` is packed by sub-stream ``t mod W`` of every lane, so worker
  processes build different steps at the same time, ``prefetch`` steps each, into pinned memory
  on CUDA. The sequences of a step depend on ``W`` (another ``W`` is another run) but not on the
  world size. A micro-batch's images cross to the training process as one flat uint8 buffer
  (:func:`pack_images`; DataLoader moves every tensor through a shared-memory segment of its own,
  and up to ``W x prefetch`` steps wait in ``/dev/shm``), the rank's document cache budget is split over
  its workers, and a worker's ConfigError (a source whose every record is bad, a shard without
  OBELICS' columns) reaches the trainer as the stream's one line, as it would with no workers.

Exact resumption: the main process keeps the state of every sub-stream *as of the last step it
consumed* (each worker sends its sub-streams' states with the step it packed; what a worker
prefetched but the trainer never used is not in that state), plus which sub-stream packs the
next step. :meth:`LaneBatches.lane_states` is that, as JSON, one entry per lane: with no workers
the stream's own state (the format of earlier checkpoints), else ``{"num_workers": W,
"next_worker": k, "workers": [state of sub-stream 0, ..., W - 1]}``.

Plain ``torch.utils.data.DataLoader`` rather than torchdata's ``StatefulDataLoader``: the state
that matters is the streams' own (a few integers per sub-stream, already JSON), and the
round-robin order of the workers makes the consumed state exact without snapshotting workers.
"""
from __future__ import annotations

import functools
import math
import signal
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mm1model.config import ConfigError
from mm1model.data.stream import Batch, DataConfig, PackedStream, share_document_cache


class LaneBatches:
    """One step of micro-batches at a time for a rank's data lanes (see the module docstring).

    ``micro_size``: sequences per micro-batch. ``pin_memory``: workers' batches are pinned (only
    meaningful with workers and CUDA). ``ignored_signals``: signals the worker processes ignore,
    so a preemption signal sent to the whole process group leaves them running until the trainer
    has written its checkpoint. Building it builds (and so validates) every sub-stream here:
    a bad corpus is a ConfigError before any worker starts.
    """

    def __init__(self, config: DataConfig, lanes: list[int], n_lanes: int, micro_size: int,
                 pin_memory: bool = False, ignored_signals: tuple[signal.Signals, ...] = ()):
        self.config, self.lanes, self.micro_size = config, list(lanes), micro_size
        self.num_workers = config.num_workers
        subs = max(1, self.num_workers)
        # streams[lane][w]: the state of sub-stream w of a lane as of the last consumed step
        self.streams = {i: [PackedStream(config, rank=i, world_size=n_lanes, split="train", worker=w,
                                         num_workers=subs) for w in range(subs)] for i in self.lanes}
        self.next_worker = 0
        self.pin_memory, self.ignored_signals = pin_memory, ignored_signals
        self._batches: Iterator[dict] | None = None

    def __len__(self) -> int:
        return len(self.lanes)

    # ------------------------------------------------------------------------------ state
    def lane_states(self) -> dict[int, dict]:
        """JSON-ready state of each lane as of the last step returned (module docstring)."""
        if self.num_workers == 0:
            return {i: streams[0].state_dict() for i, streams in self.streams.items()}
        return {i: {"num_workers": self.num_workers, "next_worker": self.next_worker,
                    "workers": [s.state_dict() for s in streams]} for i, streams in self.streams.items()}

    def load_lane_states(self, states: dict[str, dict]) -> None:
        """Restore :meth:`lane_states` (keys as strings, as JSON has them); workers restart from it."""
        self.close()
        for i, streams in self.streams.items():
            state = states[str(i)]
            workers = state.get("num_workers", 0)
            if workers != self.num_workers:
                raise ConfigError(f"the checkpoint's data lanes ran {workers} loader workers, this run "
                                  f"{self.num_workers}: keep data.num_workers as it was")
            if self.num_workers == 0:
                streams[0].load_state_dict(state)
                continue
            for stream, sub in zip(streams, state["workers"]):
                stream.load_state_dict(sub)
            self.next_worker = int(state["next_worker"])

    # --------------------------------------------------------------------------- iteration
    def next_step(self) -> list[Batch]:
        """The rank's micro-batches of the next step, one per lane in lane order."""
        if self.num_workers == 0:
            return [streams[0].next_batch(self.micro_size) for streams in self.streams.values()]
        if self._batches is None:
            self._batches = iter(self._loader())
        packed = next(self._batches)
        worker = packed["worker"]
        if worker != self.next_worker:  # the DataLoader's round-robin is what makes the state exact
            raise RuntimeError(f"step packed by sub-stream {worker}, expected {self.next_worker}")
        if "error" in packed:  # the stream's own one line, not DataLoader's re-raised traceback
            self.close()
            raise ConfigError(packed["error"])
        for streams, state in zip(self.streams.values(), packed["states"]):
            streams[worker].load_state_dict(state)
        self.next_worker = (worker + 1) % self.num_workers
        return [unpack_images(batch) for batch in packed["batches"]]

    def close(self) -> None:
        """Stop the worker processes (the next :meth:`next_step` starts them again)."""
        self._batches = None

    def _loader(self) -> DataLoader:
        return DataLoader(_StepPacker(self.streams, self.micro_size, self.next_worker, self.num_workers),
                          batch_size=None, num_workers=self.num_workers, prefetch_factor=self.config.prefetch,
                          pin_memory=self.pin_memory, collate_fn=_as_is,
                          worker_init_fn=functools.partial(_init_worker, self.ignored_signals, self.num_workers))


def _init_worker(signals: tuple[signal.Signals, ...], num_workers: int, worker_id: int) -> None:
    for sig in signals:
        signal.signal(sig, signal.SIG_IGN)
    share_document_cache(num_workers)  # the rank's document cache budget, split over its workers


def _as_is(item: Any) -> Any:
    return item  # items are whole steps already; the default would turn numpy into tensors


class _StepPacker(IterableDataset):
    """In DataLoader worker ``j``: sub-stream ``(first + j) mod W`` of every lane, one step per
    item, so the DataLoader's round-robin over workers hands out steps in order."""

    def __init__(self, streams: dict[int, list[PackedStream]], micro_size: int, first: int, num_workers: int):
        self.streams, self.micro_size, self.first, self.num_workers = streams, micro_size, first, num_workers

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = (self.first + (info.id if info is not None else 0)) % self.num_workers
        mine = [streams[worker] for streams in self.streams.values()]  # this process's copies
        while True:
            try:
                batches = [pack_images(stream.next_batch(self.micro_size)) for stream in mine]
            except ConfigError as err:  # e.g. every record of a source bad: the trainer says so
                yield {"worker": worker, "error": str(err)}
                return
            yield {"worker": worker, "batches": batches, "states": [s.state_dict() for s in mine]}


def pack_images(batch: Batch) -> Batch:
    """The batch with its uint8 images in one flat buffer, ``pixels`` (in shared memory in a
    worker process), and their ``shapes``: one shared-memory segment per micro-batch crosses to
    the training process instead of one per image (about 100 at the paper's settings)."""
    images = batch["images"]
    if any(image.dtype != torch.uint8 for image in images):
        raise TypeError("pack_images takes the stream's uint8 images")
    pixels = torch.empty(sum(image.numel() for image in images), dtype=torch.uint8)
    if get_worker_info() is not None:
        pixels.share_memory_()  # written in place: pickling it to the trainer copies nothing
    if images:
        torch.cat([image.reshape(-1) for image in images], out=pixels)
    return {**{k: v for k, v in batch.items() if k != "images"}, "pixels": pixels,
            "shapes": [tuple(image.shape) for image in images]}


def unpack_images(batch: Batch) -> Batch:
    """Undo :func:`pack_images`: ``images`` as views of ``pixels`` (equal to the stream's)."""
    batch = dict(batch)
    pixels, shapes = batch.pop("pixels"), batch.pop("shapes")
    sizes = [math.prod(shape) for shape in shapes]
    batch["images"] = [part.view(shape) for part, shape in zip(pixels.split(sizes), shapes)]
    return batch
