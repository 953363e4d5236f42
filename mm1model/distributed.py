"""Rank and world size for the trainer, from the environment torchrun or submitit exports."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist


@dataclass
class Dist:
    """Rank and world size (from torchrun's or submitit's exported environment)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> Dist:
    """Join the process group described by RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT.

    ``torchrun`` and ``submitit.helpers.TorchDistributedEnvironment().export()`` both set these.
    gloo on CPU, nccl on GPU. A single process (no WORLD_SIZE) needs no group.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size == 1:
        return Dist()
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        owns = True
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, owns_group=owns)


def gather_objects(obj: Any, ddp: Dist) -> list[Any]:
    if ddp.world_size == 1:
        return [obj]
    out: list[Any] = [None] * ddp.world_size
    dist.all_gather_object(out, obj)
    return out
