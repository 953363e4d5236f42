"""The GPU benchmark: tokens/s and MFU of the paper's sweep sizes in bf16, eager and compiled,
under FSDP2 on one GPU (a process group of one rank): ``python -m mm1model.bench --gpu``.

``scripts/gpu-bench.sh`` runs it once per size in a fresh process (a compile cache and an
allocator that start clean; an out-of-memory error costs one size, not the run) and writes the
records to ``$OUT/gpu-bench.jsonl``. Budget: under 8 minutes on one H200 for 85M, 302M and 1.2B.

Each record is :func:`mm1model.bench.step.bench`'s dict for one (size, compile) pair, or
``{"size", "compile", "error"}`` when that pair failed (e.g. out of memory).
"""
from __future__ import annotations

import gc
import traceback
from typing import Any, Callable

import torch

from mm1model import paper
from mm1model.bench.step import bench

GPU_SIZES = ("85M", "302M", "1.2B")
# (global batch, micro-batch) in sequences of 4096 tokens, 16 images each: ~16K text positions
# per step; the micro-batch of 1.2B keeps the ViT-L and LM activations well inside 141 GB.
GPU_BATCH = {"85M": (4, 4), "302M": (4, 4), "1.2B": (4, 2)}


def gpu_bench(sizes: tuple[str, ...] = GPU_SIZES, compile_modes: tuple[bool, ...] = (False, True),
              seq_len: int = paper.SEQ_LEN, batch_size: int | None = None, micro_batch_size: int | None = None,
              steps: int = 8, warmup: int = 3, device: str | None = None, compile_backend: str = "inductor",
              model: dict[str, Any] | None = None, threads: int | None = None,
              echo: Callable[[dict[str, Any]], None] = lambda _: None) -> list[dict[str, Any]]:
    """One record per (size, compile) pair, FSDP2 over a world of one, bf16 on CUDA (fp32 on
    CPU, where the tests run it at a tiny size). A pair that raises (other than for a bad
    config) is recorded with its error and the next one runs."""
    from mm1model.config import ConfigError

    records = []
    for size in sizes:
        batch, micro = GPU_BATCH.get(size, (2, None))
        for compiled in compile_modes:
            try:
                record = bench(size, seq_len, batch_size or batch, micro_batch_size or micro, steps=steps,
                               warmup=warmup, threads=threads, device=device, compile=compiled, fsdp=True,
                               compile_backend=compile_backend, model=model)
            except ConfigError:
                raise
            except Exception as err:  # noqa: BLE001 - one failed pair (OOM) must not lose the others
                record = {"size": size, "compile": compiled, "error": f"{type(err).__name__}: {err}".splitlines()[0],
                          "traceback": traceback.format_exc()[-2000:]}
            records.append(record)
            echo(record)
            torch._dynamo.reset()  # the next pair compiles from scratch, as its own run would
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return records


def format_record(r: dict[str, Any]) -> str:
    """One line per record: size, compile mode, tokens/s, MFU, peak memory."""
    mode = "compiled" if r["compile"] else "eager"
    if "error" in r:
        return f"{r['size']:>5} {mode:<8} FAILED {r['error']}"
    mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
    return (f"{r['size']:>5} {mode:<8} {r['dtype']} fsdp={r['fsdp']} batch {r['batch_size']}x{r['seq_len']} "
            f"(micro {r['micro_batch_size']})  tokens/s {r['tokens_per_s']:>10,.0f}  MFU {mfu:>6}  "
            f"peak memory {r['peak_memory_mb']:,.0f} MB")
