"""Reading safetensors checkpoints into parameters, row by row: the machinery under
:mod:`mm1model.pretrained`.

A parameter's :class:`Source` is a list of dim-0 blocks (:class:`Rows`): rows of a checkpoint
tensor, rows computed at load, or copies of a tensor's mean row. :func:`check_sources` checks a
name map against the checkpoint's headers only (every parameter of the tower covered, every
tensor present, every shape equal; no tensor data read), so ``scaling launch`` can run it before
writing anything. :func:`load_sources` checks the same, then copies into each parameter only what
this process holds: all of a plain tensor, or under FSDP2 its rows of a ``Shard(0)`` DTensor,
read from the file as a ``safe_open`` slice, so no rank ever reads or holds the whole model.
:class:`LoadReport` counts what each rank read.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from mm1model.config import ConfigError
from mm1model.parametrization import unwrapped_name

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
MEAN_CHUNK_ROWS = 4096  # rows read at a time when averaging an embedding (bounded memory at any vocabulary)


class SafetensorsCheckpoint:
    """The tensors of a checkpoint directory (one ``model.safetensors`` or a sharded index), read
    lazily: :meth:`read` takes a slice of rows (dim 0) of one tensor and nothing else.
    ``bytes_read`` and ``largest_read_bytes`` count what was read (the most memory one read held)."""

    def __init__(self, path: str | Path, where: str):
        self.path, self.where = Path(path), where
        index = self.path / SAFETENSORS_INDEX_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {key: self.path / name for key, name in weight_map.items()}
        elif (self.path / SAFETENSORS_FILE).is_file():
            with safe_open(self.path / SAFETENSORS_FILE, framework="pt") as handle:
                self.files = {key: self.path / SAFETENSORS_FILE for key in handle.keys()}
        else:
            raise ConfigError(f"{where} {self.path} holds no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX_FILE} "
                              "(only safetensors checkpoints load)")
        self.bytes_read = 0
        self.largest_read_bytes = 0
        self._shapes: dict[str, tuple[int, ...]] = {}

    def require(self, key: str, for_name: str) -> None:
        if key not in self.files:
            raise ConfigError(f"{self.where} {self.path}: tensor {key} (for {for_name}) is missing from the checkpoint")

    def shape(self, key: str) -> tuple[int, ...]:
        """The shape of tensor ``key``, from its file's header (no tensor data read)."""
        if key not in self._shapes:
            with safe_open(self.files[key], framework="pt") as handle:
                self._shapes[key] = tuple(handle.get_slice(key).get_shape())
        return self._shapes[key]

    def read(self, key: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows ``start:stop`` (dim 0) of tensor ``key``, in its stored dtype."""
        with safe_open(self.files[key], framework="pt") as handle:
            tensor = handle.get_slice(key)[start:stop]
        size = tensor.numel() * tensor.element_size()
        self.bytes_read += size
        self.largest_read_bytes = max(self.largest_read_bytes, size)
        return tensor

    def mean_rows(self, key: str) -> torch.Tensor:
        """The mean (float32) of the rows of ``key`` (V, C) -> (C,), read ``MEAN_CHUNK_ROWS`` at a time."""
        rows = self.shape(key)[0]
        total = torch.zeros(self.shape(key)[1:], dtype=torch.float64)
        for start in range(0, rows, MEAN_CHUNK_ROWS):
            total += self.read(key, start, min(start + MEAN_CHUNK_ROWS, rows)).double().sum(0)
        return (total / rows).float()


@dataclass
class Rows:
    """A block of dim-0 rows of one of our parameters: checkpoint tensor ``key``; or rows
    ``computed`` at load (e.g. position embeddings read whole and interpolated) of shape
    ``computed_shape``, known from the headers before anything is read; or ``count`` copies of
    the mean row of checkpoint tensor ``mean_of`` (the rows a vocabulary grows by), computed
    only by a rank that holds them."""

    key: str | None = None
    computed: Callable[[], torch.Tensor] | None = None
    computed_shape: tuple[int, ...] = ()
    mean_of: str | None = None
    count: int = 0

    def checkpoint_key(self) -> str | None:
        """The checkpoint tensor this block reads (None for computed rows)."""
        return self.key or self.mean_of

    def rows(self, tensors: SafetensorsCheckpoint) -> int:
        return self.shape(tensors)[0]

    def shape(self, tensors: SafetensorsCheckpoint) -> tuple[int, ...]:
        if self.key:
            return tensors.shape(self.key)
        if self.mean_of:
            return (self.count, *tensors.shape(self.mean_of)[1:])
        return tuple(self.computed_shape)

    def read(self, tensors: SafetensorsCheckpoint, start: int, stop: int) -> torch.Tensor:
        if self.key:
            return tensors.read(self.key, start, stop)
        if self.mean_of:
            return tensors.mean_rows(self.mean_of).expand(stop - start, -1)
        return self.computed()[start:stop]


@dataclass
class Source:
    """Where one parameter comes from: its blocks of rows, concatenated along dim 0."""

    blocks: list[Rows] = field(default_factory=list)

    def names(self) -> str:
        return " + ".join(b.key or (f"{b.count} mean rows of {b.mean_of}" if b.mean_of else "computed rows")
                          for b in self.blocks)


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did on this rank: tensors loaded per tower, bytes read from
    the checkpoint files (this rank's rows only under FSDP2), the largest single read (bytes),
    and the bytes of the checkpoint tensors that were loaded (the full model, for comparison)."""

    loaded: dict[str, int] = field(default_factory=dict)
    bytes_read: int = 0
    largest_read_bytes: int = 0
    checkpoint_bytes: int = 0


def local_rows(param: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """This process's part of ``param`` and the global row (dim 0) it starts at: all of a plain
    tensor (0), or a rank's rows of FSDP2's ``Shard(0)`` DTensor (``torch.chunk``'s split);
    None for any other placement (then the full tensor is assembled and distributed)."""
    if not isinstance(param, DTensor):
        return param.data, 0
    if param.device_mesh.ndim != 1 or tuple(param.placements) != (Shard(0),):
        return None
    local = param.to_local()
    rows = param.shape[0]
    chunk = -(-rows // param.device_mesh.size())
    start = min(param.device_mesh.get_local_rank() * chunk, rows)
    if local.shape[0] != max(0, min(chunk, rows - start)):
        return None
    return local, start


def read_rows(source: Source, tensors: SafetensorsCheckpoint, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of the concatenation of ``source``'s blocks, each read as a slice."""
    parts, offset = [], 0
    for block in source.blocks:
        n = block.rows(tensors)
        lo, hi = max(start, offset), min(stop, offset + n)
        if lo < hi:
            parts.append(block.read(tensors, lo - offset, hi - offset))
        offset += n
    return torch.cat([p.float() for p in parts]) if len(parts) != 1 else parts[0]


def source_shape(source: Source, tensors: SafetensorsCheckpoint) -> tuple[int, ...]:
    shapes = [b.shape(tensors) for b in source.blocks]
    tails = {s[1:] for s in shapes}
    if len(tails) != 1:
        return tuple(shapes[0])  # blocks that do not stack: report the first, the check fails on it
    return (sum(s[0] for s in shapes), *shapes[0][1:])


def check_sources(model: nn.Module, sources: dict[str, Source], tensors: SafetensorsCheckpoint,
                  tower: str) -> dict[str, torch.Tensor]:
    """Check a name map against the checkpoint's headers (no tensor data read) and return
    ``model``'s parameters by unwrapped name: ConfigError (one line) for a parameter of
    ``tower`` (``lm``, ``vit``) the map does not cover, a name the model does not have, a
    tensor missing from the checkpoint, or a source whose shape is not its parameter's."""
    params = {unwrapped_name(name): param for name, param in model.named_parameters()}
    where = f"{tensors.where} {tensors.path}"
    uncovered = [name for name in params if name.startswith(f"{tower}.") and name not in sources]
    if uncovered:
        raise ConfigError(f"{where}: the {tower} name map gives no source for {len(uncovered)} parameter(s) of "
                          f"the model, first {uncovered[0]}: the checkpoint would leave them at their random init")
    unknown = [name for name in sources if name not in params]
    if unknown:
        raise ConfigError(f"{where}: the {tower} name map names {unknown[0]}, which the model does not have "
                          f"({len(unknown)} such name(s))")
    for name, source in sources.items():
        for block in source.blocks:
            if block.checkpoint_key():
                tensors.require(block.checkpoint_key(), name)
        shape = source_shape(source, tensors)
        if shape != tuple(params[name].shape):
            raise ConfigError(f"{where}: {source.names()} has shape {shape} in the checkpoint, {name} is "
                              f"{tuple(params[name].shape)} in the model")
    return params


@torch.no_grad()
def load_sources(model: nn.Module, sources: dict[str, Source], tensors: SafetensorsCheckpoint,
                 report: LoadReport, tower: str) -> None:
    """Copy every source into its parameter of ``model`` (this rank's rows), after
    :func:`check_sources` (so a bad checkpoint fails before any parameter is overwritten)."""
    params = check_sources(model, sources, tensors, tower)
    for name, source in sources.items():
        param = params[name]
        shape = source_shape(source, tensors)
        report.checkpoint_bytes += sum(math.prod(tensors.shape(b.key)) * param.element_size()
                                       for b in source.blocks if b.key)
        part = local_rows(param)
        if part is None:  # another placement: assemble the whole tensor, keep this rank's piece
            full = read_rows(source, tensors, 0, shape[0]).reshape(shape).to(param.dtype)
            shard = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
            param.to_local().copy_(shard.to_local())
        else:
            local, start = part
            if local.shape[0]:
                local.copy_(read_rows(source, tensors, start, start + local.shape[0]).reshape(local.shape))
    report.loaded[tower] = len(sources)
    report.bytes_read += tensors.bytes_read
    report.largest_read_bytes = max(report.largest_read_bytes, tensors.largest_read_bytes)
