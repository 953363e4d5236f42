"""Rank, world size and device of a trainer process, from the environment torchrun or submitit exports.

One path for every way a run starts (a sweep cell, a launch, torchrun): the process reads
RANK / WORLD_SIZE / LOCAL_RANK and trains on ``cuda:LOCAL_RANK`` of its node, so each task must
see every GPU of the node (submitit's ``TorchDistributedEnvironment().export()`` must be called
with ``set_cuda_visible_devices=False``; with its default each task sees one GPU, and local
ranks 1-7 would ask for a device that does not exist). :func:`task_device` checks that.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from mm1model.config import ConfigError


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

    def device(self, device_type: str) -> torch.device:
        """The device this process trains on (see :func:`task_device`)."""
        return task_device(device_type, self.local_rank)


def visible_gpus() -> int:
    """GPUs this process may use: the CUDA_VISIBLE_DEVICES list when set, else what CUDA counts."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return len([d for d in listed.split(",") if d.strip()])
    return torch.cuda.device_count()


def task_device(device_type: str, local_rank: int) -> torch.device:
    """``cuda:local_rank`` on GPUs (one process per GPU of the node), the CPU otherwise. A local
    rank with no GPU of its own is one clear ConfigError naming CUDA_VISIBLE_DEVICES."""
    if device_type != "cuda":
        return torch.device("cpu")
    visible = visible_gpus()
    if local_rank >= visible:
        raise ConfigError(f"local rank {local_rank} sees {visible} GPU(s) "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): every task of a "
                          "node must see all its GPUs; export submitit's environment with "
                          "set_cuda_visible_devices=False")
    return torch.device("cuda", local_rank)


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
        backend = "nccl" if device_type == "cuda" else "gloo"
        store = loopback_store(world_size)
        if store is None:
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, store=store, rank=int(os.environ["RANK"]), world_size=world_size)
        owns = True
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, owns_group=owns)


_LOOPBACK = ("127.0.0.1", "localhost")
_listening: list[socket.socket] = []  # the loopback store's socket lives as long as the process


def loopback_store(world_size: int) -> dist.TCPStore | None:
    """For processes of one machine (MASTER_ADDR 127.0.0.1, as local launches and sweeps export
    it): the rendezvous store, its server bound to loopback only. torch's own store listens on
    every interface whatever MASTER_ADDR says, so rank 0 hands it a socket already bound to
    127.0.0.1. None where the default store is wanted (another address, or torchrun's agent store)."""
    addr = os.environ.get("MASTER_ADDR")
    if addr not in _LOOPBACK or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return None
    port, rank = int(os.environ["MASTER_PORT"]), int(os.environ["RANK"])
    listen_fd = None
    if rank == 0:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
        _listening.append(sock)
        listen_fd = sock.fileno()
    return dist.TCPStore("127.0.0.1", port, world_size, rank == 0, master_listen_fd=listen_fd,
                         wait_for_workers=False)


def gather_objects(obj: Any, ddp: Dist) -> list[Any]:
    if ddp.world_size == 1:
        return [obj]
    out: list[Any] = [None] * ddp.world_size
    dist.all_gather_object(out, obj)
    return out
