"""The resource plan of a launch: what a run costs and whether it fits, before anything is submitted.

Pure arithmetic over the size table (:mod:`mm1model.sizes`) and the analytic counts
(:mod:`mm1model.counting`): parameters, FLOPs per step, per-device memory under FSDP2 with and
without activation checkpointing, the micro-batch and gradient accumulation that fit, step time
and GPU-hours at a stated MFU, and the submitit/SLURM parameters of the job.

Memory model (bytes per device; P = parameters, W = ranks, b = micro-batch, T = sequence length):

* Model state, sharded by FSDP2 over W ranks: fp32 master weights 4P/W, fp32 gradients 4P/W
  (FSDP2 reduces in fp32), AdamW's two moments 8P/W.
* Gathered transients (W > 1): the root module's parameters (embeddings, connector, head) stay
  unsharded from forward to backward (FSDP2 does not reshard the root), plus two blocks in flight
  (the current one and the prefetched one) and one block's unsharded gradients and their fp32
  reduce-scatter input. On one device with bf16 autocast, autocast caches a bf16 copy of every
  weight (2P) instead.
* Evaluation needs less than a training step: it runs the same forward without saving
  activations and computes its loss from the chunked head (no (B, T, V) logits), so the training
  estimate covers it. Gradients are reduce-scattered after every micro-batch (the trainer's
  default), so only their shard stays; ``reduce_every_micro_batch=False`` adds the unsharded fp32
  gradients FSDP2 holds between micro-batches.
* Activations saved for backward, counted tensor by tensor from ``mm1model.model`` (see
  :func:`lm_layer_bytes`, :func:`image_bytes`, :func:`head_bytes`). With activation
  checkpointing only each block's input is kept, plus one block's activations while it is
  recomputed.

On CPU (fp32, no autocast) this model was checked against the peak resident memory of a real
training step (``tests/test_launch_memory.py``): 3M at 8 x 512 tokens, 565 MB estimated, 622 MB
measured (820 and 895 MB before the fused head + loss); per layer the slopes agree within 4%, and the gap is a constant
~60 MB of runtime workspace the plan does not count. The GPU variant (bf16 autocast, norms in fp32,
the document mask turned into a bf16 bias per attention call) follows the same count with the
dtypes autocast uses; it has not been measured on a GPU here, so the plan keeps
``reserve_gb`` of every GPU free for the CUDA context, NCCL buffers and allocator fragmentation.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from mm1model import paper
from mm1model.config import ConfigError
from mm1model.counting import param_counts, step_flops
from mm1model.model import Block, MM1Config
from mm1model.vision import ViTBlock
from mm1model.paper import GPU_MEMORY_GB, GPU_PEAK_FLOPS

GB = 1e9
# torchtitan's FSDP2 Llama-3.1-8B runs on H100 reach 33-39% MFU in bf16 (mm1-and-peers.md).
DEFAULT_MFU = paper.TORCHTITAN_MFU
# Activation checkpointing re-runs every block's forward in backward: 4/3 of the work.
AC_RECOMPUTE = 4.0 / 3.0
# What a checkpoint holds per parameter: fp32 weights and AdamW's two fp32 moments (gradients are
# not saved). A sharded save writes each rank's share; a node writes its ranks' shares at once.
CHECKPOINT_BYTES_PER_PARAM = 12.0
# Assumed write bandwidth of one node to the shared checkpoint filesystem, GB/s (a parallel
# filesystem gives several; this machine's local disk, measured by `python -m mm1model.bench
# --checkpoint`, is in the README). Only the save-time estimate depends on it.
CHECKPOINT_WRITE_GB_S = 2.0
NODE_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass
class PlanConfig:
    """What to plan. Sizes in sequences (``batch_size`` global, ``micro_batch_size`` per rank),
    lengths in tokens, memory in GB (1e9 bytes), ``time`` as SLURM's HH:MM:SS per job (a job
    that reaches it is requeued and resumes from its checkpoint).

    ``nodes`` None: the fewest nodes (a power of two) that fit. ``micro_batch_size`` and
    ``activation_checkpointing`` None: chosen for throughput (the largest micro-batch that fits
    without checkpointing; with it only when nothing fits without). ``images_per_sequence``
    None: ``max_images`` (an upper bound of the mixture's images). ``device`` "cuda" plans bf16
    autocast on GPUs; "cpu" plans fp32 on processes of ``gpu_mem_gb`` each (no step time).
    ``reduce_every_micro_batch``: the trainer's FSDP2 gradient sync (see TrainConfig); False adds
    the unsharded gradients FSDP2 then holds between micro-batches. ``checkpoint_minutes``: how
    often to checkpoint (turned into steps by the step time); ``checkpoint_write_gb_s``: write
    bandwidth of one node to the checkpoint filesystem, for the save time.
    """

    size: str
    model: dict[str, Any] = field(default_factory=dict)
    batch_size: int = paper.BATCH_SIZE
    seq_len: int = paper.SEQ_LEN
    max_images: int = paper.MAX_IMAGES
    images_per_sequence: int | None = None
    steps: int = paper.STEPS
    z_loss: float | None = None
    nodes: int | None = None
    gpus_per_node: int = 8
    gpu: str = "H100"
    gpu_mem_gb: float | None = None
    reserve_gb: float = 8.0
    mfu: float = DEFAULT_MFU
    peak_flops: float | None = None
    micro_batch_size: int | None = None
    activation_checkpointing: bool | None = None
    device: str = "cuda"
    partition: str | None = None
    time: str = "24:00:00"
    cpus_per_task: int = 8
    mem_per_node_gb: float | None = None
    reduce_every_micro_batch: bool = True
    checkpoint_minutes: float = 30.0
    checkpoint_write_gb_s: float = CHECKPOINT_WRITE_GB_S

    def __post_init__(self) -> None:
        for key in ("batch_size", "seq_len", "steps", "gpus_per_node", "cpus_per_task"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        for key in ("nodes", "micro_batch_size", "images_per_sequence"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < (0 if key == "images_per_sequence" else 1)):
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        if self.device not in ("cuda", "cpu"):
            raise ConfigError(f"device must be cuda or cpu, got {self.device!r}")
        if self.device == "cuda" and self.gpu_mem_gb is None and self.gpu not in GPU_MEMORY_GB:
            raise ConfigError(f"unknown GPU '{self.gpu}': give --gpu-mem GB (known: {', '.join(GPU_MEMORY_GB)})")
        if self.gpu_mem_gb is not None and not self.gpu_mem_gb > 0:
            raise ConfigError(f"gpu_mem_gb must be positive, got {self.gpu_mem_gb}")
        if not 0 < self.mfu <= 1:
            raise ConfigError(f"mfu must be in (0, 1], got {self.mfu}")
        if self.reserve_gb < 0:
            raise ConfigError(f"reserve_gb must be >= 0, got {self.reserve_gb}")
        if not (self.checkpoint_minutes > 0 and self.checkpoint_write_gb_s > 0):
            raise ConfigError("checkpoint_minutes and checkpoint_write_gb_s must be > 0, got "
                              f"{self.checkpoint_minutes} and {self.checkpoint_write_gb_s}")
        parse_time(self.time)

    @property
    def memory_gb(self) -> float:
        """Memory of one device (GB)."""
        if self.gpu_mem_gb is not None:
            return float(self.gpu_mem_gb)
        if self.device == "cpu":
            return host_memory_bytes() / GB / self.gpus_per_node
        return GPU_MEMORY_GB[self.gpu]

    @property
    def usable_gb(self) -> float:
        """Memory of one device the plan may fill (GB): all of it on CPU, less ``reserve_gb`` on a GPU."""
        return self.memory_gb - (self.reserve_gb if self.device == "cuda" else 0.0)


def parse_time(text: str) -> int:
    """SLURM time ``[D-]HH:MM:SS`` (or ``MM:SS`` / ``MM``) in minutes, rounded up; ConfigError if malformed."""
    days, _, rest = str(text).rpartition("-")
    try:
        parts = [int(p) for p in rest.split(":")]
        d = int(days) if days else 0
    except ValueError:
        raise ConfigError(f"--time must look like HH:MM:SS, got {text!r}") from None
    if not 1 <= len(parts) <= 3 or any(p < 0 for p in parts) or d < 0:
        raise ConfigError(f"--time must look like HH:MM:SS, got {text!r}")
    h, m, s = {1: (0, parts[0], 0), 2: (0, *parts), 3: tuple(parts)}[len(parts)] if parts else (0, 0, 0)
    minutes = d * 24 * 60 + h * 60 + m + math.ceil(s / 60)
    if minutes < 1:
        raise ConfigError(f"--time must be at least one minute, got {text!r}")
    return minutes


def host_memory_bytes() -> int:
    """Physical memory of this machine (bytes)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# ---------------------------------------------------------------------------------------- memory
def lm_layer_bytes(cfg: MM1Config, seq_len: int, bf16: bool) -> float:
    """Bytes one LM block saves for backward, per sequence position.

    fp32 (elements x 4): the block input and RMSNorm's normalized input and output (x3 for each
    of the two norms: 6h), RoPE'd q and k and v (h + 2 kv), SDPA's output and its reshaped copy
    (2h; CPU flash attention keeps no T x T matrix), the residual sum (h) and SwiGLU's four
    ffn-wide tensors (w1 out, silu out, w3 out, product): 9h + 2kv + 4f.
    bf16 autocast: the same tensors at 2 bytes, except the two norm inputs and normalized inputs
    kept in fp32 (autocast runs norms in fp32: +8h), each linear's own bf16 cast of its input
    (q, k, v and w1, w3 each save one: +6h), and the boolean document mask turned into a bf16
    additive bias that memory-efficient attention saves per call (2T).
    """
    lm = cfg.lm
    h, kv, f = lm.d_model, lm.kv_heads * lm.head_dim, lm.ffn_dim
    elements = 9 * h + 2 * kv + 4 * f
    if not bf16:
        return 4.0 * elements
    return 2.0 * elements + 8 * h + 6 * h + 2 * seq_len


def image_bytes(cfg: MM1Config, bf16: bool, checkpointing: bool = False) -> float:
    """Bytes the ViT and connector save for backward per image (at the ViT's native resolution).

    ViT block per token: the block input, LayerNorm outputs, q/k/v, attention output and its
    copy, the residual sum (9c) and the MLP's two hidden tensors (2m); tokens = patches + class.
    C-Abstractor bottleneck per grid location: about 13 output-wide tensors (convs, LayerNorm2d
    in and out, SiLUs, the gate product) plus its input; readout MLP per image token.
    With checkpointing a ViT block keeps only its input.
    """
    vit, con, d = cfg.vit, cfg.connector, cfg.lm.d_model
    c, m = vit.width, vit.mlp_dim
    tokens = vit.grid**2 + 1
    unit = 2.0 if bf16 else 4.0
    per_layer = c if checkpointing else 9 * c + 2 * m
    vit_bytes = unit * tokens * per_layer * vit.n_layers + unit * 3 * vit.image_size**2
    if checkpointing:
        vit_bytes += unit * tokens * (9 * c + 2 * m)  # the block being recomputed
    k = con.image_tokens
    if con.kind == "c_abstractor":
        hidden = con.hidden if con.depth else c
        locations = [vit.grid**2] * con.depth + [k] * con.depth
        inputs = [c] + [hidden] * (2 * con.depth - 1)
        connector = sum(n * (13 * hidden + c_in) for n, c_in in zip(locations, inputs))
        connector += vit.grid**2 * c + k * (hidden + 3 * d)
    else:
        connector = vit.grid**2 * c + k * (c + 3 * d)
    crops = 5 if vit.sub_images else 1
    return crops * (vit_bytes + unit * connector)


def head_bytes(cfg: MM1Config, bf16: bool) -> tuple[float, float]:
    """(bytes per position, fixed bytes) of the output head and its loss at their peak, the end
    of the fused forward (:mod:`mm1model.loss`): no V-wide tensor per position.

    Per position: the head's input (fp32: the final norm runs in fp32), the copy of its labelled
    rows and their saved gradient, 3 x 4d. Fixed: the head's fp32 gradient accumulator (4Vd;
    with bf16 also the weight's bf16 copy and the saved bf16 gradient, 2 x 2Vd) and one chunk's
    logits (fp32, plus the bf16 matmul output and its bf16 gradient copy with bf16).
    """
    from mm1model.loss import chunk_rows

    v, d = cfg.lm.vocab_size, cfg.lm.d_model
    rows = chunk_rows(v, "cuda" if bf16 else "cpu")
    if bf16:
        return 12.0 * d, 4.0 * v * d + 2 * 2.0 * v * d + rows * v * (4 + 2 * 2)
    return 12.0 * d, 4.0 * v * d + rows * v * 4


@dataclass
class Memory:
    """Per-device memory of one configuration, in bytes (``total`` is their sum)."""

    weights: float
    gradients: float
    optimizer: float
    gathered: float
    activations: float
    micro_batch_size: int
    activation_checkpointing: bool

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.gathered + self.activations

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: round(getattr(self, k) / GB, 3)
                               for k in ("weights", "gradients", "optimizer", "gathered", "activations")}
        out["total"] = round(self.total / GB, 3)
        out["micro_batch_size"] = self.micro_batch_size
        return out


def _block_params(cfg: MM1Config) -> tuple[int, int, int]:
    """(LM block, ViT block, root) parameter counts: FSDP2's shard units. One block of each is
    built on the meta device (no memory), so the count is the module FSDP2 wraps."""
    import torch

    with torch.device("meta"):
        lm_block = sum(p.numel() for p in Block(cfg.lm).parameters())
        vit_block = sum(p.numel() for p in ViTBlock(cfg.vit).parameters())
    root = param_counts(cfg).params_total - cfg.lm.n_layers * lm_block - cfg.vit.n_layers * vit_block
    return lm_block, vit_block, root


def memory_estimate(cfg: MM1Config, *, micro_batch_size: int, seq_len: int, images_per_sequence: int,
                    world_size: int = 1, bf16: bool = True, activation_checkpointing: bool = False,
                    unsharded_grads: bool = False) -> Memory:
    """Peak memory of one device in a steady-state training step (see the module docstring).

    ``images_per_sequence`` images of the ViT's native size per sequence (a text-only micro-batch
    still encodes one blank image). ``unsharded_grads``: gradient accumulation without a
    reduce-scatter per micro-batch, where FSDP2 holds fp32 gradients of every parameter between
    micro-batches (measured: 4 bytes x all parameters per rank). Returns bytes per component.
    """
    p = param_counts(cfg).params_total
    lm_block, vit_block, root = _block_params(cfg)
    w = world_size
    weights, gradients, optimizer = 4.0 * p / w, 4.0 * p / w, 8.0 * p / w
    if unsharded_grads and w > 1:
        gradients += 4.0 * p
    if w > 1:
        unit = 2 if bf16 else 4
        block = max(lm_block, vit_block)
        gathered = unit * root + 2 * unit * block + (unit + 4) * max(block, root)
    else:
        gathered = 2.0 * p if bf16 else 0.0
    b, t = micro_batch_size, seq_len
    layer = lm_layer_bytes(cfg, t, bf16)
    unit = 2.0 if bf16 else 4.0
    if activation_checkpointing:
        lm_act = cfg.lm.n_layers * unit * cfg.lm.d_model + layer
    else:
        lm_act = cfg.lm.n_layers * layer
    images = max(1, b * images_per_sequence)
    head_per_position, head_fixed = head_bytes(cfg, bf16)
    activations = (b * t * (lm_act + head_per_position + unit * cfg.lm.d_model)  # + embeddings out
                   + head_fixed
                   + images * image_bytes(cfg, bf16, activation_checkpointing)
                   + b * t * t)  # the boolean document mask (1 byte per element), shared by all layers
    return Memory(weights, gradients, optimizer, gathered, activations, micro_batch_size, activation_checkpointing)


# ---------------------------------------------------------------------------------------- the plan
@dataclass
class Plan:
    """A resolved plan. FLOPs count matrix products (``mm1model.counting``), memory is GB
    (1e9 bytes) per device, ``step_time_s`` at ``mfu`` of the GPUs' dense bf16 peak,
    ``gpu_hours`` = steps x step time x GPUs. ``fits`` False means ``refusal`` says why and
    ``smallest`` names the smallest configuration that fits. ``checkpoint_gb_per_gpu``: what each
    rank writes per checkpoint; ``save_time_s``: a node's save at ``checkpoint_write_gb_s``;
    ``checkpoint_interval_steps``: ``checkpoint_minutes`` in steps (None without a step time).
    ``loader_workers``: data loader worker processes per rank (:func:`loader_workers`)."""

    size: str
    params: int
    params_total: int
    param_counts: dict[str, int]
    batch_size: int
    seq_len: int
    images_per_sequence: int
    steps: int
    tokens_per_step: int
    flops_per_step: float
    nodes: int
    gpus_per_node: int
    world_size: int
    device: str
    gpu: str | None
    gpu_mem_gb: float
    usable_mem_gb: float
    micro_batch_size: int
    grad_accum_steps: int
    activation_checkpointing: bool
    memory: dict[str, Any]
    memory_no_ac: dict[str, Any]
    memory_ac: dict[str, Any]
    memory_per_gpu_gb: float
    fits: bool
    mfu: float
    peak_flops: float | None
    step_time_s: float | None
    gpu_hours: float | None
    wall_hours: float | None
    checkpoint_gb_per_gpu: float
    save_time_s: float
    checkpoint_interval_steps: int | None
    slurm: dict[str, Any]
    loader_workers: int = 0
    refusal: str | None = None
    smallest: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _choose(cfg: MM1Config, config: PlanConfig, world: int) -> tuple[Memory, Memory, Memory] | None:
    """(chosen, best without AC, best with AC) on ``world`` ranks, or None when the batch (or the
    requested micro-batch) does not split evenly. "Best" is the largest micro-batch that fits,
    else micro-batch 1; "chosen" follows ``activation_checkpointing``, or when that is None takes
    checkpointing only if nothing fits without it."""
    if config.batch_size % world:
        return None
    per_rank = config.batch_size // world
    if config.micro_batch_size and per_rank % config.micro_batch_size:
        return None
    images = config.max_images if config.images_per_sequence is None else config.images_per_sequence
    usable = config.usable_gb * GB
    options = [config.micro_batch_size] if config.micro_batch_size else _divisors(per_rank)[::-1]

    def best(ac: bool) -> Memory:
        for mb in options:
            accumulates = per_rank // mb > 1
            mem = memory_estimate(cfg, micro_batch_size=mb, seq_len=config.seq_len, images_per_sequence=images,
                                  world_size=world, bf16=config.device == "cuda", activation_checkpointing=ac,
                                  unsharded_grads=accumulates and not config.reduce_every_micro_batch)
            if mem.total <= usable:
                return mem
        return mem  # the smallest micro-batch: it does not fit, the caller says so

    no_ac, with_ac = best(False), best(True)
    if config.activation_checkpointing is None:
        chosen = no_ac if no_ac.total <= usable else with_ac
    else:
        chosen = with_ac if config.activation_checkpointing else no_ac
    return chosen, no_ac, with_ac


def slurm_parameters(config: PlanConfig, nodes: int, job_name: str, step_time_s: float | None = None,
                     save_time_s: float | None = None) -> dict[str, Any]:
    """The exact ``submitit.SlurmExecutor`` parameters: one task per GPU on every node.

    ``signal_delay_s``: SLURM sends USR2 this long before the time limit. The trainer checkpoints
    at the next step boundary, so the delay covers three step times (finish the step, margin) and
    twice the checkpoint's save time (an asynchronous save in flight, then the preemption save),
    and at least two minutes."""
    delay = 120
    if step_time_s or save_time_s:
        delay = max(120, math.ceil(3 * (step_time_s or 0.0) + 2 * (save_time_s or 0.0)))
    params: dict[str, Any] = {
        "job_name": job_name, "nodes": nodes, "ntasks_per_node": config.gpus_per_node,
        "cpus_per_task": config.cpus_per_task, "time": parse_time(config.time), "signal_delay_s": delay,
    }
    if config.device == "cuda":
        params["gpus_per_node"] = config.gpus_per_node
    if config.partition:
        params["partition"] = config.partition
    if config.mem_per_node_gb is not None:
        params["mem"] = f"{int(config.mem_per_node_gb * GB / 2**20)}MB"  # SLURM's MB are MiB
    return params


def loader_workers(device: str, cpus_per_task: int) -> int:
    """Data loader workers per rank (``data.num_workers``) a plan defaults to: on a GPU, every CPU of
    the rank's task but the one that drives the GPU, at least one, so packing and image decoding
    overlap the step (measured: one thread packs about 26 of MM1's sequences/s, a 9M step on 8
    H100s asks about 25 per rank; ``python -m mm1model.bench --data``). On a CPU, 0: the cell's
    cores are its compute, and 0 keeps a CPU run's sequences those of every earlier run."""
    return max(1, cpus_per_task - 1) if device == "cuda" else 0


def make_plan(config: PlanConfig, model_config: MM1Config | None = None, job_name: str | None = None) -> Plan:
    """Resolve ``config`` into a :class:`Plan` (never raises for a plan that does not fit: the
    plan says so). ``model_config`` defaults to the size's, with ``config.model`` overrides."""
    cfg = model_config or _model_config(config)
    counts = param_counts(cfg)
    images = config.max_images if config.images_per_sequence is None else config.images_per_sequence
    flops = step_flops(cfg, config.batch_size, config.seq_len, images)
    usable = config.usable_gb
    nodes = config.nodes
    if nodes is None:
        nodes = next((n for n in NODE_COUNTS if _fits(cfg, config, n * config.gpus_per_node)), NODE_COUNTS[-1])
    world = nodes * config.gpus_per_node
    choice = _choose(cfg, config, world)
    if choice is None:
        if config.batch_size % world:
            raise ConfigError(f"batch_size {config.batch_size} is not divisible by the {world} GPUs ({nodes} nodes "
                              f"x {config.gpus_per_node}); pick --nodes/--gpus-per-node that divide it")
        raise ConfigError(f"micro_batch_size {config.micro_batch_size} does not divide the "
                          f"{config.batch_size // world} sequences per GPU ({config.batch_size} over {world})")
    chosen, no_ac, with_ac = choice
    fits = chosen.total <= usable * GB
    peak = config.peak_flops or (GPU_PEAK_FLOPS.get(config.gpu) if config.device == "cuda" else None)
    step_time = gpu_hours = wall = None
    if peak:
        step_time = flops * (AC_RECOMPUTE if chosen.activation_checkpointing else 1.0) / (world * peak * config.mfu)
        gpu_hours = config.steps * step_time * world / 3600
        wall = config.steps * step_time / 3600
    checkpoint_gb = CHECKPOINT_BYTES_PER_PARAM * counts.params_total / world / GB
    save_time = checkpoint_gb * config.gpus_per_node / config.checkpoint_write_gb_s
    interval = max(1, round(config.checkpoint_minutes * 60 / step_time)) if step_time else None
    refusal = smallest = None
    if not fits:
        if not (config.device == "cpu" and config.gpu_mem_gb is None):  # more processes share one host's memory
            smallest = smallest_fit(cfg, config)
        where = f"{nodes} node(s) x {config.gpus_per_node} {_device_name(config)}"
        refusal = (f"{cfg.name} does not fit on {where}: needs {chosen.total / GB:.1f} GB per device "
                   f"(micro-batch {chosen.micro_batch_size}, activation checkpointing "
                   f"{'on' if chosen.activation_checkpointing else 'off'}), {usable:.1f} GB usable; "
                   + _instead(smallest, config))
    name = job_name or f"mm1-{cfg.name}"
    return Plan(
        size=config.size, params=counts.params, params_total=counts.params_total, param_counts=asdict(counts),
        batch_size=config.batch_size, seq_len=config.seq_len, images_per_sequence=images, steps=config.steps,
        tokens_per_step=config.batch_size * config.seq_len, flops_per_step=flops,
        nodes=nodes, gpus_per_node=config.gpus_per_node, world_size=world, device=config.device,
        gpu=config.gpu if config.device == "cuda" else None, gpu_mem_gb=round(config.memory_gb, 3),
        usable_mem_gb=round(usable, 3), micro_batch_size=chosen.micro_batch_size,
        grad_accum_steps=config.batch_size // (world * chosen.micro_batch_size),
        activation_checkpointing=chosen.activation_checkpointing, memory=chosen.to_dict(),
        memory_no_ac=no_ac.to_dict(), memory_ac=with_ac.to_dict(), memory_per_gpu_gb=round(chosen.total / GB, 3),
        fits=fits, mfu=config.mfu, peak_flops=peak, step_time_s=step_time, gpu_hours=gpu_hours, wall_hours=wall,
        checkpoint_gb_per_gpu=round(checkpoint_gb, 3), save_time_s=save_time, checkpoint_interval_steps=interval,
        slurm=slurm_parameters(config, nodes, name, step_time, save_time),
        loader_workers=loader_workers(config.device, config.cpus_per_task), refusal=refusal, smallest=smallest)


def _instead(smallest: dict[str, Any] | None, config: PlanConfig) -> str:
    """What to ask for instead, in the flags' words."""
    if config.device == "cpu" and config.gpu_mem_gb is None:
        return "it needs more than this machine's memory: plan it for GPUs (--executor slurm --dry-run)"
    if smallest is None:
        return f"no configuration up to {NODE_COUNTS[-1]} nodes fits"
    return (f"the smallest that fits is --nodes {smallest['nodes']} --gpus-per-node {smallest['gpus_per_node']} "
            f"({smallest['memory_per_gpu_gb']:.1f} GB per device)")


def _device_name(config: PlanConfig) -> str:
    if config.device == "cpu":
        return f"CPU processes of {config.memory_gb:.1f} GB"
    return f"{config.gpu} ({config.memory_gb:g} GB)" if config.gpu_mem_gb is None else f"GPUs of {config.memory_gb:g} GB"


def _model_config(config: PlanConfig) -> MM1Config:
    from mm1model.train import TrainConfig, model_config

    return model_config(TrainConfig(size=config.size, model=config.model, z_loss=config.z_loss))


def _fits(cfg: MM1Config, config: PlanConfig, world: int) -> bool:
    choice = _choose(cfg, config, world)
    return choice is not None and choice[0].total <= config.usable_gb * GB


def smallest_fit(cfg: MM1Config, config: PlanConfig) -> dict[str, Any] | None:
    """The fewest GPUs that fit, micro-batch and activation checkpointing left free: whole nodes
    of the requested GPUs per node, or of 8 (with 1, 2 or 4 GPUs of one node before those).
    Ties go to the requested shape. ``{nodes, gpus_per_node, memory_per_gpu_gb, ...}`` or None."""
    from dataclasses import replace

    shapes = [(n, config.gpus_per_node) for n in NODE_COUNTS]
    shapes += [(1, g) for g in (1, 2, 4)] + [(n, 8) for n in NODE_COUNTS]
    shapes.sort(key=lambda shape: (shape[0] * shape[1], shape[1] != config.gpus_per_node))
    for nodes, per_node in shapes:
        trial = replace(config, gpus_per_node=per_node, nodes=nodes, activation_checkpointing=None,
                        micro_batch_size=None)
        choice = _choose(cfg, trial, nodes * per_node)
        if choice is not None and choice[0].total <= config.usable_gb * GB:
            chosen = choice[0]
            return {"nodes": nodes, "gpus_per_node": per_node, "memory_per_gpu_gb": round(chosen.total / GB, 3),
                    "micro_batch_size": chosen.micro_batch_size,
                    "activation_checkpointing": chosen.activation_checkpointing}
    return None


def _size(gb: float) -> str:
    return f"{gb:.1f} GB" if gb >= 1 else f"{gb * 1000:.0f} MB"


def format_plan(plan: Plan) -> str:
    """The plan as a few human-readable lines."""
    mem = plan.memory
    lines = [
        f"model      {plan.size}: N = {plan.params:,} LM non-embedding parameters, {plan.params_total:,} in all",
        f"compute    {plan.flops_per_step:.3e} FLOPs/step ({plan.tokens_per_step:,} tokens, "
        f"{plan.images_per_sequence} images/sequence), {plan.steps:,} steps",
        f"devices    {plan.nodes} node(s) x {plan.gpus_per_node} {plan.gpu or 'cpu'} = {plan.world_size} "
        f"({plan.gpu_mem_gb:g} GB each, {plan.usable_mem_gb:g} GB usable)",
        f"batch      micro-batch {plan.micro_batch_size} x {plan.grad_accum_steps} accumulation x "
        f"{plan.world_size} ranks = {plan.batch_size} sequences of {plan.seq_len}",
        f"memory/GPU {_size(plan.memory_per_gpu_gb)}: weights {_size(mem['weights'])}, grads "
        f"{_size(mem['gradients'])}, optimizer {_size(mem['optimizer'])}, gathered {_size(mem['gathered'])}, "
        f"activations {_size(mem['activations'])} (activation checkpointing "
        f"{'on' if plan.activation_checkpointing else 'off'}; {_size(plan.memory_no_ac['total'])} without it, "
        f"{_size(plan.memory_ac['total'])} with it)",
    ]
    if plan.step_time_s is not None:
        lines.append(f"time       {plan.step_time_s:.2f} s/step at {plan.mfu:.0%} MFU: {plan.gpu_hours:,.0f} GPU-hours, "
                     f"{plan.wall_hours / 24:,.1f} days on {plan.world_size} GPUs")
    every = (f"every {plan.checkpoint_interval_steps:,} steps (~{plan.checkpoint_interval_steps * plan.step_time_s / 60:.0f} min)"
             if plan.checkpoint_interval_steps else "at the configured interval")
    lines.append(f"checkpoint {_size(plan.checkpoint_gb_per_gpu)} per GPU, sharded, {every}; ~{plan.save_time_s:.0f} s to "
                 "write per node (covered by the SLURM signal delay)")
    lines.append(f"loader     {plan.loader_workers} data loader worker(s) per rank (data.num_workers)"
                 + (", batches pinned, copied non_blocking" if plan.device == "cuda" else ""))
    lines.append("slurm      " + " ".join(f"{k}={v}" for k, v in plan.slurm.items()))
    if not plan.fits:
        lines.append(f"REFUSED    {plan.refusal}")
    return "\n".join(lines)
