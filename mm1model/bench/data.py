"""The data benchmark: packed sequences/s and images/s of the training pipeline, per number of
loader workers, beside what a GPU step of each sweep size consumes: ``python -m mm1model.bench --data``.

Supply: one rank's data lanes (:class:`~mm1model.data.loader.LaneBatches`) on the prepared corpus
at the given packing settings, consumed as fast as they come (no model), from a cold document
cache (a web-scale corpus never revisits a record within an epoch; the bundled corpus would,
from its cache). Untimed warm-up steps first (worker start-up, first decodes), then ``steps``
timed ones.

Demand: the planner's step time without activation checkpointing (the FLOPs model
:func:`mm1model.counting.step_flops` at ``mfu`` of the GPUs' dense bf16 peak; the planner's
``step_time_s`` where it keeps activations, longer where it recomputes them, so this is the most a
step can ask) for each sweep size, with the images per sequence measured here; a rank needs
``batch_size / world_size`` sequences per step time. ``busy``: the fraction of the time the GPU
computes (:func:`gpu_busy`). In the training process (0 workers) packing and the step take turns,
so a step of ``d`` sequences at demand ``D`` and supply ``S`` takes ``d/D + d/S``: busy =
S / (S + D). Loader workers pack while the GPU computes: busy = min(1, S / D).
"""
from __future__ import annotations

import time
from typing import Any, Callable

from mm1model import paper
from mm1model.data.loader import LaneBatches
from mm1model.data.stream import DataConfig, clear_document_cache
from mm1model.counting import step_flops
from mm1model.sizes import get_size

SWEEP_SIZES = ("9M", "85M", "302M", "1.2B")  # sweeps/mm1.toml's
DEFAULT_MFU = paper.TORCHTITAN_MFU  # the planner's default


def supply(workers: int, seq_len: int = paper.SEQ_LEN, image_size: int = 336,
           image_tokens: int = paper.IMAGE_TOKENS, max_images: int = paper.MAX_IMAGES, micro_size: int = 8,
           steps: int = 8, warmup: int = 1, prefetch: int = 2, corpus: str | None = None) -> dict[str, Any]:
    """Throughput of one lane packed by ``workers`` loader workers (0 = in this process):
    ``sequences_per_s``, ``images_per_s``, ``images_per_sequence``, over ``steps`` steps of
    ``micro_size`` sequences after ``warmup`` untimed steps per worker."""
    config = DataConfig(corpus=corpus, seq_len=seq_len, max_images=max_images, image_tokens=image_tokens,
                        image_size=image_size, num_workers=workers, prefetch=prefetch)
    clear_document_cache()  # forked workers would inherit a warm cache
    lanes = LaneBatches(config, lanes=[0], n_lanes=1, micro_size=micro_size)
    try:
        for _ in range(warmup * max(1, workers)):
            lanes.next_step()
        images, start = 0, time.perf_counter()
        for _ in range(steps):
            images += sum(len(batch["images"]) for batch in lanes.next_step())
        elapsed = time.perf_counter() - start
    finally:
        lanes.close()
        clear_document_cache()
    sequences = steps * micro_size
    return {"workers": workers, "seq_len": seq_len, "image_size": image_size, "image_tokens": image_tokens,
            "max_images": max_images, "sequences": sequences, "seconds": elapsed,
            "sequences_per_s": sequences / elapsed, "images_per_s": images / elapsed,
            "images_per_sequence": images / sequences}


def demand(size: str, images_per_sequence: float, seq_len: int = paper.SEQ_LEN, max_images: int = paper.MAX_IMAGES,
           batch_size: int = paper.BATCH_SIZE, gpus: int = 8, gpu: str = "H100", mfu: float = DEFAULT_MFU) -> dict[str, Any]:
    """What one rank consumes per second in the planner's step of ``size`` on one node of ``gpus``."""
    images = min(round(images_per_sequence), max_images)
    step_time = step_flops(get_size(size), batch_size, seq_len, images) / (gpus * paper.GPU_PEAK_FLOPS[gpu] * mfu)
    per_rank = batch_size / gpus
    return {"size": size, "gpu": gpu, "gpus": gpus, "mfu": mfu, "batch_size": batch_size,
            "images_per_sequence": images, "step_time_s": step_time,
            "sequences_per_s": per_rank / step_time, "images_per_s": per_rank * images / step_time}


def gpu_busy(workers: int, supply_per_s: float, demand_per_s: float) -> float:
    """The fraction of the time the GPU computes when ``workers`` loader workers (0: the training
    process itself) pack ``supply_per_s`` sequences/s and its steps consume ``demand_per_s``."""
    if workers == 0:
        return supply_per_s / (supply_per_s + demand_per_s)
    return min(1.0, supply_per_s / demand_per_s)


def data_bench(workers: tuple[int, ...] = (0, 1, 2), sizes: tuple[str, ...] = SWEEP_SIZES, mfu: float = DEFAULT_MFU,
               gpu: str = "H100", gpus: int = 8, batch_size: int = paper.BATCH_SIZE,
               echo: Callable[[dict[str, Any]], None] = lambda _: None, **settings: Any) -> list[dict[str, Any]]:
    """One ``{"kind": "supply", ...}`` record per worker count (:func:`supply` with ``settings``),
    then one ``{"kind": "demand", ...}`` per size with ``busy`` per worker count."""
    supplies = []
    for count in workers:
        record = {"kind": "supply", **supply(count, **settings)}
        echo(record)
        supplies.append(record)
    images = sum(r["images_per_sequence"] for r in supplies) / len(supplies)
    demands = []
    for size in sizes:
        need = demand(size, images, seq_len=supplies[0]["seq_len"], max_images=supplies[0]["max_images"],
                      batch_size=batch_size, gpus=gpus, gpu=gpu, mfu=mfu)
        busy = {str(r["workers"]): gpu_busy(r["workers"], r["sequences_per_s"], need["sequences_per_s"]) for r in supplies}
        record = {"kind": "demand", **need, "busy": busy}
        echo(record)
        demands.append(record)
    return supplies + demands


def format_record(record: dict[str, Any]) -> str:
    """One line of the human-readable report."""
    if record["kind"] == "supply":
        return (f"{record['workers']} worker(s): {record['sequences_per_s']:.1f} packed sequences/s, "
                f"{record['images_per_s']:.0f} images/s ({record['images_per_sequence']:.1f} images/seq, "
                f"{record['seq_len']} tokens, {record['image_size']} px, {record['image_tokens']} tokens/image)")
    busy = ", ".join(f"{w} workers {b:.0%}" for w, b in record["busy"].items())
    return (f"{record['size']:>5} on {record['gpus']} {record['gpu']} at {record['mfu']:.0%} MFU: step "
            f"{record['step_time_s']:.2f} s, needs {record['sequences_per_s']:.1f} sequences/s and "
            f"{record['images_per_s']:.0f} images/s per rank; GPU busy: {busy}")
