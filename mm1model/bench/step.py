"""One training step of the trainer, timed: tokens/s, steps/s, MFU and peak memory.

Times the trainer's own step (``forward_backward`` over the micro-batches, global-norm clipping,
AdamW) on synthetic packed batches shaped like the real ones: two documents per sequence
(block-diagonal attention, restarting positions) and images filling about half of the positions
as in MM1 (~1M text + ~1M image tokens per 512 x 4096 batch), at most 16 per sequence.

Reports tokens/s (sequence positions per second, all ranks), steps/s, MFU (model FLOPs from
``mm1model.counting`` over the device's peak, None on CPU unless ``peak_flops``) and peak
memory: ``torch.cuda.max_memory_allocated`` on GPU; on CPU the process's peak resident set size
(``ru_maxrss``, which includes the ~0.3 GB of the Python/torch runtime; ``baseline_rss_mb`` is the
RSS before the model was built). Launched under ``torchrun`` each rank runs batch / world size.
"""
from __future__ import annotations

import dataclasses
import resource
import time
from typing import Any

import torch

from mm1model import accelerator
from mm1model.config import ConfigError
from mm1model.counting import flops_per_token, image_flops, param_counts
from mm1model.data import DataConfig
from mm1model.parallelize import parallelize
from mm1model.tokens import (
    IGNORE_INDEX,
    IMAGE_END_ID,
    IMAGE_ID,
    IMAGE_START_ID,
    SPECIAL_TOKENS,
)
from mm1model.train import (
    TrainConfig,
    build_model,
    build_optimizer,
    clip_gradients,
    forward_backward,
    init_distributed,
    peak_flops_per_s,
    resolve,
)
from mm1model.train_config import OptimizerConfig

# The peak LR of a benchmarked step: what a step costs does not depend on it.
BENCH_LR = 1e-3


def synthetic_batch(batch_size: int, seq_len: int, tokens_per_image: int, image_size: int,
                    vocab_size: int, images_per_seq: int, generator: torch.Generator) -> dict[str, Any]:
    """A packed batch of random tokens: each sequence holds two documents, the first opening with
    ``images_per_seq`` images (start, placeholders, end). Labels follow the packer's rules."""
    ids = torch.randint(len(SPECIAL_TOKENS), vocab_size, (batch_size, seq_len), generator=generator)
    span = tokens_per_image + 2
    for k in range(images_per_seq):
        ids[:, k * span] = IMAGE_START_ID
        ids[:, k * span + 1:(k + 1) * span - 1] = IMAGE_ID
        ids[:, (k + 1) * span - 1] = IMAGE_END_ID
    split = max(images_per_seq * span + 1, seq_len // 2)
    doc_ids = (torch.arange(seq_len) >= split).long().expand(batch_size, seq_len).clone()
    position_ids = torch.cat([torch.arange(split), torch.arange(seq_len - split)]).expand(batch_size, seq_len).clone()
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, :-1] = ids[:, 1:]
    labels[labels == IMAGE_ID] = IGNORE_INDEX
    labels[:, split - 1] = IGNORE_INDEX  # no loss across the document boundary
    images = [torch.randn(3, image_size, image_size, generator=generator)
              for _ in range(batch_size * images_per_seq)]
    return {"input_ids": ids, "labels": labels, "doc_ids": doc_ids, "position_ids": position_ids,
            "images": images, "source": torch.zeros(batch_size, dtype=torch.long)}


def bench(size: str, seq_len: int, batch_size: int = 8, micro_batch_size: int | None = None,
          steps: int = 5, warmup: int = 2, threads: int | None = None, images_per_seq: int | None = None,
          peak_flops: float | None = None, device: str | None = None, compile: bool = False,
          activation_checkpointing: bool = False, fsdp: bool = False, compile_backend: str = "inductor",
          model: dict[str, Any] | None = None) -> dict[str, Any]:
    """Time ``steps`` training steps after ``warmup`` untimed ones; returns the measurements.

    ``fsdp``: in a single process, wrap the model in FSDP2 over a world of one (a gloo or nccl
    group of one rank is created for it and destroyed after); under ``torchrun`` the trainer
    shards anyway. ``compile_backend``: the ``torch.compile`` backend of each block (``inductor``
    as the trainer; tests use ``aot_eager``). ``model``: overrides of the size's MM1Config.
    On CUDA the step runs in bf16 (autocast, and bf16 parameters under FSDP2), on CPU in fp32.
    """
    import torch.distributed as dist


    if steps < 1 or warmup < 0:
        raise ConfigError(f"need steps >= 1 and warmup >= 0, got {steps} and {warmup}")
    if threads is not None:
        torch.set_num_threads(threads)
    baseline_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    config = resolve(TrainConfig(size=size, model=dict(model or {}), data=DataConfig(seq_len=seq_len),
                                 batch_size=batch_size, micro_batch_size=micro_batch_size,
                                 optimizer=OptimizerConfig(lr=BENCH_LR, warmup_steps=0),
                                 device=device, compile=compile, activation_checkpointing=activation_checkpointing))
    device_type = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ddp = init_distributed(device_type)
    dev = ddp.device(device_type)
    accelerator.configure(dev)
    single_fsdp = fsdp and ddp.world_size == 1
    # With several ranks build_model's parallelize compiles and shards; in one process the bench
    # calls parallelize itself, to choose the compile backend and shard a world of one.
    own_compile = compile and ddp.world_size == 1
    if single_fsdp and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                                world_size=1, device_id=dev if dev.type == "cuda" else None)
        owns_group = True
    else:
        owns_group = False
    try:
        net, mcfg = build_model(dataclasses.replace(config, compile=compile and not own_compile), dev)
        if own_compile or single_fsdp:  # compile, then shard: the trainer's order
            parallelize(net, device_type=dev.type, compile=own_compile, compile_backend=compile_backend,
                        fsdp=single_fsdp)
        # measured, not assumed: the parameters are DTensors exactly when FSDP2 sharded the model
        sharded = any(hasattr(p, "full_tensor") for p in net.parameters())
        out = _time_steps(net, mcfg, config, dev, ddp, batch_size, seq_len, micro_batch_size, steps, warmup,
                          images_per_seq)
    finally:
        if owns_group:
            dist.destroy_process_group()
    step_s = out.pop("step_s")
    images = out["images_per_seq"]
    tokens = batch_size * seq_len
    flops = flops_per_token(mcfg, seq_len) * tokens + image_flops(mcfg) * batch_size * images
    peak = peak_flops_per_s(dev, peak_flops)
    if dev.type == "cuda":
        peak_memory_mb = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"size": size, "params": param_counts(mcfg).params, "device": str(dev), "world_size": ddp.world_size,
            "threads": torch.get_num_threads(), "seq_len": seq_len, "batch_size": batch_size,
            "micro_batch_size": out["micro_batch_size"], "images_per_seq": images, "step_s": step_s,
            "steps_per_s": 1 / step_s, "tokens_per_s": tokens / step_s, "model_flops_per_step": flops,
            "mfu": flops / step_s / (peak * ddp.world_size) if peak else None, "peak_flops": peak,
            "peak_memory_mb": peak_memory_mb, "baseline_rss_mb": None if dev.type == "cuda" else baseline_rss_mb,
            "dtype": "bf16" if dev.type == "cuda" else "fp32", "fsdp": sharded,
            "compile": compile, "compile_backend": compile_backend if compile else None,
            "activation_checkpointing": activation_checkpointing}


def _time_steps(model, mcfg, config, dev: torch.device, ddp, batch_size: int, seq_len: int,
                micro_batch_size: int | None, steps: int, warmup: int, images_per_seq: int | None) -> dict[str, Any]:

    optimizer = build_optimizer(model, config)
    per_rank = batch_size // ddp.world_size
    micro = micro_batch_size or per_rank
    if batch_size % ddp.world_size or per_rank % micro:
        raise ConfigError(f"batch {batch_size} does not split into micro-batches of {micro} on {ddp.world_size} ranks")
    tpi = mcfg.tokens_per_image
    if images_per_seq is None:
        images_per_seq = min(16, (seq_len // 2) // (tpi + 2))
    if images_per_seq * (tpi + 2) >= seq_len:
        raise ConfigError(f"{images_per_seq} images of {tpi} tokens do not fit in seq_len {seq_len}")
    vocab = min(mcfg.lm.vocab_size, 4096)
    generator = torch.Generator().manual_seed(ddp.rank)
    micro_batches = [synthetic_batch(micro, seq_len, tpi, config.data.image_size, vocab, images_per_seq, generator)
                     for _ in range(per_rank // micro)]
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        forward_backward(model, iter(micro_batches), len(micro_batches), dev)
        clip_gradients(model, config.optimizer.grad_clip)
        optimizer.step()

    for _ in range(warmup):
        step()
    if dev.type == "cuda":
        accelerator.synchronize(dev)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        accelerator.synchronize(dev)
    return {"step_s": (time.perf_counter() - start) / steps, "micro_batch_size": micro,
            "images_per_seq": images_per_seq}
