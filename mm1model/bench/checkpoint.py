"""What a sharded checkpoint costs: each rank's resident memory during a save, and save / load
seconds per GB, for a real model and optimizer under FSDP2.

    python -m torch.distributed.run --standalone --nproc_per_node 4 -m mm1model.bench.checkpoint --size 9M
    python -m mm1model.bench.checkpoint --size 9M          # one process, for comparison

Each rank builds the size's MM1 (FSDP2 over gloo when there are several), creates AdamW's state,
then saves one checkpoint with :class:`mm1model.checkpoint.Checkpointer` and loads it back with
:func:`mm1model.checkpoint.load_checkpoint`, while a thread samples its resident set every 2 ms.
Rank 0 prints one JSON record per rank: the bytes of model and optimizer state the rank holds,
its resident memory before the save and at its peak during it, and the save and load times.
With the old rank-0 format, rank 0 gathered the whole state; now each rank writes its own shards,
so rank 0's extra memory during a save is about its own share, whatever the world size.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist

from mm1model.bench.step import BENCH_LR
from mm1model.checkpoint import Checkpointer, load_checkpoint
from mm1model.distributed import gather_objects, init_distributed
from mm1model.train import build_model, build_optimizer, resolve
from mm1model.train_config import OptimizerConfig, TrainConfig

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """This process's resident set size now (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE


class PeakRSS:
    """Samples the resident set in a thread while the ``with`` block runs."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()

    def __enter__(self) -> "PeakRSS":
        self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def _release_freed_memory() -> None:
    """Give freed heap back to the OS (glibc), so the resident set shows what is live."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the numbers include freed-but-kept heap
        pass


def local_state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of parameters and AdamW state this rank holds (its shards under FSDP2)."""
    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if hasattr(t, "to_local") else t

    total = sum(local(p).numel() * local(p).element_size() for p in model.parameters())
    for state in optimizer.state.values():
        total += sum(local(v).numel() * local(v).element_size() for v in state.values() if torch.is_tensor(v))
    return total


def measure(size: str, out: Path) -> dict:
    ddp = init_distributed("cpu")
    config = resolve(TrainConfig(size=size, optimizer=OptimizerConfig(lr=BENCH_LR), batch_size=ddp.world_size,
                                 device="cpu", run_dir=str(out)))
    model, _ = build_model(config, torch.device("cpu"))
    optimizer = build_optimizer(model, config)
    for p in model.parameters():  # one zero-gradient step creates AdamW's moments, as training would
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _release_freed_memory()
    state = {"step": 1, "initial_loss": None, "best_val_loss": None, "wall_s": 0.0}
    before = rss_bytes()
    with PeakRSS() as peak:
        t0 = time.perf_counter()
        Checkpointer(out, ddp, keep=1).save(model, optimizer, state, lanes={})
        save_s = time.perf_counter() - t0
    _release_freed_memory()
    t0 = time.perf_counter()
    loaded = load_checkpoint(out, model, optimizer)
    load_s = time.perf_counter() - t0
    assert loaded is not None and loaded["step"] == 1
    held = local_state_bytes(model, optimizer)
    record = {"rank": ddp.rank, "world_size": ddp.world_size, "size": size, "state_gb": held / 1e9,
              "rss_before_gb": before / 1e9, "rss_peak_save_gb": peak.peak / 1e9,
              "save_extra_gb": (peak.peak - before) / 1e9, "save_s": save_s, "load_s": load_s}
    records = gather_objects(record, ddp)
    if ddp.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return {"ranks": records, "written_gb": sum(r["state_gb"] for r in records)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mm1model.bench.checkpoint", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="9M", help="model size (default 9M: 346M parameters with its ViT-L)")
    parser.add_argument("--dir", help="where to write the checkpoint (default: a temporary directory)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    # every rank must name the same directory: key the default by the rendezvous port
    out = Path(args.dir or Path(tempfile.gettempdir()) / f"mm1-ckpt-bench-{os.environ.get('MASTER_PORT', os.getpid())}")
    result = measure(args.size, out)
    if int(os.environ.get("RANK", "0")) == 0:
        total = result["written_gb"]
        result["save_gb_per_s"] = total / max(r["save_s"] for r in result["ranks"])
        result["load_gb_per_s"] = total / max(r["load_s"] for r in result["ranks"])
        print(json.dumps(result, indent=1))
        if not args.dir:
            shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
