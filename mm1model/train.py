"""The bundled trainer: MM1's pre-training recipe, exact resume, divergence detection, FSDP2.

``train(TrainConfig) -> TrainResult`` is what every sweep cell and every launch runs; from a
shell, ``python -m mm1model.train CONFIG.json`` (or under ``torchrun``).

Recipe (McKinzie et al. 2024, appendix B), every value a :class:`TrainConfig` field:

* AdamW, betas (0.9, 0.95), gradient clipping at global norm 1.0, z-loss from the size table
  (0; 1e-4 at 30B) unless ``z_loss`` is set.
* Schedule: linear warmup over ``warmup_steps`` (2000) then cosine decay to ``min_lr_ratio``
  (10%) of the peak at ``decay_steps`` (200k, counted from step 0, warmup included), flat after.
  See :func:`lr_multiplier`.
* Weight decay decoupled from the learning rate: the per-step decay is ``lambda x s(t)``, with
  ``s(t)`` the schedule multiplier, whatever the peak LR. See :func:`torch_weight_decay`.
* No weight decay on norms, biases (every parameter with fewer than 2 dimensions) and embeddings
  (token embeddings, hence a tied output head too, and learned position embeddings); the
  groups come from ``mm1model.parametrization`` (standard by default; muP / CompleteP through
  the ``model`` overrides ``parametrization`` and ``base_size``). See :func:`build_optimizer`.
* bf16 autocast on GPU, fp32 on CPU.

Run directory (``run_dir``), every file written atomically (``mm1model.records``), only by rank 0:

* ``config.json``: the resolved :class:`TrainConfig` plus :data:`RECORD_KEYS` (N, the model
  config, the code version, world size). :func:`load_config` reads it back.
* ``metrics.jsonl``: one row per step ``{step, lr, loss, grad_norm, tokens, tokens_per_s, mfu,
  wall_s}`` (``step`` counts finished updates, 1-based) and eval rows ``{step, val_loss,
  val_loss_by_source}``. Truncated back to the checkpoint's step on resume.
* ``events.jsonl``: one ``start`` row per trainer start (with the step it resumed from), plus
  ``checkpoint``, ``signal``, ``diverged`` and ``end`` rows. Never truncated.
* ``result.json``: :class:`TrainResult`, written when the run ends (ok, diverged or failed).
* ``checkpoints/step_XXXXXXXX.pt``: the last ``keep_checkpoints`` checkpoints.

A run directory whose ``result.json`` says ok or diverged is final: :func:`train` returns it at
once. Otherwise :func:`train` resumes from the newest readable checkpoint (a corrupt one is
skipped with a warning) and, on CPU with a fixed seed and thread count, reproduces the losses of
an uninterrupted run bit for bit.

Preemption: SIGTERM, SIGUSR1 and SIGUSR2 set a flag; at the next step boundary the trainer
checkpoints, then calls the handler installed before it (submitit's requeue handler), or exits
with 128 + the signal number when there was none (no result.json: the run is resumable).

Data parallelism: rank and world size come from the environment (``torchrun``, or
``submitit.helpers.TorchDistributedEnvironment().export()``); gloo on CPU, nccl on GPU; FSDP2 is
applied by :mod:`mm1model.parallelize`. The global batch is ``batch_size / micro_batch_size``
micro-batches, each drawn from its own data lane (``PackedStream(rank=lane,
world_size=n_lanes)``); rank r runs lanes r, r + world, ... with gradient accumulation. So the
sequences of a step do not depend on the world size, and a checkpoint (full state dicts) resumes
at any world size that divides the number of lanes.
"""
from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mm1model import records
from mm1model.checkpoint import Preemption, load_checkpoint, save_checkpoint, set_rng_state
from mm1model.config import ConfigError, from_dict, to_dict
from mm1model.data import DataConfig, PackedStream, validation_batches
from mm1model.distributed import Dist, init_distributed
from mm1model.tokens import IGNORE_INDEX

SOURCES = ("caption", "interleaved", "text")  # index = the Batch's ``source`` value
FINAL_STATUSES = ("ok", "diverged")
# Keys config.json adds to the TrainConfig fields; load_config drops them.
RECORD_KEYS = ("params", "param_counts", "model_config", "code_version", "world_size")
# Fields that may change between a run and its resumption without changing its trajectory.
RESUMABLE_CHANGES = ("run_dir", "threads", "steps", "eval_interval", "checkpoint_interval",
                     "keep_checkpoints", "log_interval", "compile", "activation_checkpointing")

# Dense bf16 peak FLOP/s per GPU (vendor datasheets, without sparsity), for MFU.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


@dataclass
class TrainConfig:
    """One training run. Defaults are MM1's pre-training recipe (batch 512 x 4096, 200k steps).

    ``lr``: peak learning rate; None = MM1's law ``exp(-0.4214 ln N - 0.5535)`` for this size's N.
    ``weight_decay``: lambda, the per-step decoupled decay at the peak of the schedule (the
    decay at step t is ``lambda x lr_multiplier(t)``); None = 0.1 x peak LR (MM1's choice).
    ``model``: overrides of the size's :class:`~mm1model.model.MM1Config`, nested dicts
    (e.g. ``{"lm": {"n_layers": 1}}``). ``z_loss``: None = the size's own coefficient.
    ``batch_size``: global batch in sequences, fixed whatever the world size; each rank runs
    ``batch_size / world_size`` of it in micro-batches of ``micro_batch_size`` (None = no
    accumulation). With ``micro_batch_size`` set, the data each micro-batch sees does not depend
    on the world size, so a 2-process run follows the 1-process one.
    ``seed``: model initialisation and torch RNG; the sample order is ``data.seed``.
    ``divergence_factor``: after warmup, a training loss above this times the first step's loss
    stops the run as diverged (a non-finite loss does at any step).
    ``eval_interval`` / ``checkpoint_interval``: in steps, 0 = only at the end / never.
    ``peak_flops``: peak FLOP/s of one device for MFU; None = the :data:`PEAK_FLOPS` entry of
    the GPU, or no MFU on CPU. ``device``: "cpu", "cuda" or None (cuda when available).
    """

    size: str = "100K"
    model: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    lr: float | None = None
    min_lr_ratio: float = 0.1
    warmup_steps: int = 2000
    decay_steps: int = 200_000
    weight_decay: float | None = None
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    z_loss: float | None = None
    batch_size: int = 512
    micro_batch_size: int | None = None
    steps: int = 200_000
    eval_interval: int = 1000
    eval_sequences: int = 64
    eval_batch_size: int | None = None
    checkpoint_interval: int = 1000
    keep_checkpoints: int = 2
    log_interval: int = 10
    seed: int = 0
    threads: int | None = None
    divergence_factor: float = 1.5
    activation_checkpointing: bool = False
    compile: bool = False
    peak_flops: float | None = None
    device: str | None = None
    run_dir: str = "runs/train"

    def __post_init__(self) -> None:
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if self.weight_decay is not None and not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0 or self.decay_steps < self.warmup_steps:
            raise ConfigError(f"need 0 <= warmup_steps <= decay_steps, got {self.warmup_steps} and {self.decay_steps}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")
        for name in ("batch_size", "eval_sequences", "keep_checkpoints", "log_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("steps", "eval_interval", "checkpoint_interval"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("micro_batch_size", "eval_batch_size", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1 or null, got {getattr(self, name)}")
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ConfigError(f"micro_batch_size {self.micro_batch_size} must divide batch_size {self.batch_size}")
        if not self.divergence_factor > 1:
            raise ConfigError(f"divergence_factor must be > 1, got {self.divergence_factor}")
        if self.grad_clip <= 0:
            raise ConfigError(f"grad_clip must be > 0, got {self.grad_clip}")
        if self.device not in (None, "cpu", "cuda"):
            raise ConfigError(f"device must be cpu, cuda or null, got {self.device!r}")


@dataclass
class TrainResult:
    """What ``result.json`` holds. Losses are mean cross-entropy in nats per text token.

    ``status``: ok | diverged | failed. ``final_val_loss``: at the last step (None unless ok).
    ``params``: N, LM non-embedding parameters. ``tokens``: sequence positions trained on
    (steps x batch_size x seq_len). ``wall_s``: training seconds summed over restarts.
    """

    status: str
    final_val_loss: float | None
    best_val_loss: float | None
    val_loss_by_source: dict[str, float]
    steps: int
    tokens: int
    wall_s: float
    params: int
    lr: float
    size: str
    batch_size: int
    seq_len: int
    seed: int
    run_dir: str
    diverged_at_step: int | None = None
    error: str | None = None


# ------------------------------------------------------------------------------------ recipe
def lr_multiplier(step: int, warmup_steps: int, decay_steps: int, min_lr_ratio: float = 0.1) -> float:
    """Schedule multiplier s(t) of the peak LR for update ``step`` (0-based).

    Warmup: ``s = (t + 1) / warmup_steps`` for t < warmup_steps, so the first update already
    moves and update ``warmup_steps - 1`` runs at the peak. Then a cosine from 1 at
    t = warmup_steps to ``min_lr_ratio`` at t = decay_steps (counted from step 0, warmup
    included), ``min_lr_ratio`` after.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= decay_steps:
        return min_lr_ratio
    progress = (step - warmup_steps) / (decay_steps - warmup_steps)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# MM1's learning-rate law (McKinzie et al. 2024, "Model Scaling"): the one place its numbers live.
MM1_LN_PARAMS = -0.4214
MM1_INTERCEPT = -0.5535


def mm1_peak_lr(params: float) -> float:
    """MM1's fitted optimum peak LR, exp(-0.4214 ln N - 0.5535), for N LM parameters."""
    return math.exp(MM1_LN_PARAMS * math.log(params) + MM1_INTERCEPT)


def torch_weight_decay(weight_decay: float, peak_lr: float) -> float:
    """The ``weight_decay`` to hand ``torch.optim.AdamW`` for decoupled decay ``lambda``.

    torch's AdamW multiplies each parameter by ``1 - lr_t x wd`` per step. With
    ``lr_t = peak_lr x s(t)`` and ``wd = lambda / peak_lr`` that is ``1 - lambda x s(t)``: the
    decay follows the schedule but not the peak LR, as in MM1 (AXLearn's decoupled AdamW).
    MM1's default lambda = 0.1 x peak_lr gives wd = 0.1.
    """
    return weight_decay / peak_lr


# ------------------------------------------------------------------------------------ setup
def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def model_config(config: TrainConfig):
    """The :class:`MM1Config` a run trains: the size's, then ``model`` overrides, then z_loss."""
    from mm1model.model import MM1Config
    from mm1model.sizes import get_size

    base = get_size(config.size)
    overrides = dict(config.model)
    if config.z_loss is not None:
        overrides = _merge(overrides, {"lm": {"z_loss": config.z_loss}})
    if not overrides:
        return base
    init_fields = {f.name for f in dataclasses.fields(MM1Config) if f.init}
    merged = _merge({k: v for k, v in to_dict(base).items() if k in init_fields}, overrides)
    return from_dict(MM1Config, _strip_non_init(MM1Config, merged), where="model")


def _strip_non_init(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``asdict`` also emits derived (init=False) fields, which ``from_dict`` would refuse."""
    out = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if key in fields and not fields[key].init:
            continue
        hint = hints.get(key)
        if isinstance(value, dict) and dataclasses.is_dataclass(hint):
            value = _strip_non_init(hint, value)
        out[key] = value
    return out


def resolve(config: TrainConfig) -> TrainConfig:
    """Fill the derived values: peak LR (MM1's law), lambda, and the data's image geometry.

    ``data.image_size`` / ``data.image_tokens`` come from the model so the packer always makes
    the placeholders the connector fills. Raises ConfigError for an unknown size or bad model.
    """
    from mm1model.counting import param_counts

    mcfg = model_config(config)
    lr = config.lr if config.lr is not None else mm1_peak_lr(param_counts(mcfg).params)
    # with sub-image decomposition the ViT sees tiles of half the side: the input is twice as big
    image_size = mcfg.vit.image_size * (2 if mcfg.vit.sub_images else 1)
    data = dataclasses.replace(config.data, image_size=image_size, image_tokens=mcfg.tokens_per_image)
    for name, value, model_value in (("image_size", config.data.image_size, image_size),
                                     ("image_tokens", config.data.image_tokens, mcfg.tokens_per_image)):
        if value is not None and value != model_value:
            raise ConfigError(f"data.{name}={value} disagrees with the model's {model_value}; leave it null")
    weight_decay = config.weight_decay if config.weight_decay is not None else 0.1 * lr
    return dataclasses.replace(config, lr=lr, weight_decay=weight_decay, data=data)


def load_config(path: str | os.PathLike) -> TrainConfig:
    """A TrainConfig from a JSON file: a plain config, or a run's ``config.json``."""
    try:
        data = records.read_json(path)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except ValueError as err:
        raise ConfigError(f"config file {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    return from_dict(TrainConfig, {k: v for k, v in data.items() if k not in RECORD_KEYS})


def code_version() -> str:
    """``git describe`` of the checkout this package runs from, else the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=root,
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mm1-scaling")
    except PackageNotFoundError:
        return "unknown"


def peak_flops_per_s(device: torch.device, configured: float | None = None) -> float | None:
    """Peak dense bf16 FLOP/s of one device: the configured value, else :data:`PEAK_FLOPS`."""
    if configured is not None:
        return configured
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in PEAK_FLOPS.items():
            if key in name:
                return value
    return None


# ------------------------------------------------------------------------------------ steps
def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    out["images"] = [img.to(device, non_blocking=True) for img in batch["images"]]
    return out


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def forward_backward(model: torch.nn.Module, micro_batches: Iterator[dict[str, Any]], n_micro: int,
                     device: torch.device) -> torch.Tensor:
    """Accumulate gradients of the mean loss over ``n_micro`` micro-batches; returns the sum of
    their losses (a detached scalar). Under FSDP2 gradients are reduced on the last one only."""
    fsdp = hasattr(model, "set_requires_gradient_sync")
    loss_sum = torch.zeros((), device=device)
    for i, batch in enumerate(micro_batches):
        if fsdp:
            model.set_requires_gradient_sync(i == n_micro - 1)
        batch = _to_device(batch, device)
        with _autocast(device):
            out = model(batch["input_ids"], images=batch["images"], labels=batch["labels"],
                        doc_ids=batch["doc_ids"], position_ids=batch["position_ids"])
        (out.loss / n_micro).backward()
        loss_sum += out.loss.detach().float()
    return loss_sum


def clip_gradients(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """Clip to a global L2 norm; returns the norm before clipping (a plain tensor, also under FSDP2)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if hasattr(total, "full_tensor"):  # DTensor: a partial norm per shard -> the global one
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_([p for p in model.parameters() if p.grad is not None], max_norm, total)
    return total


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[dict[str, Any]], device: torch.device,
             ddp: Dist) -> tuple[float, dict[str, float]]:
    """Mean validation cross-entropy (nats per labelled token; no z-loss), overall and per source.

    Batches are dealt round-robin to ranks; every rank runs the same number of forwards (FSDP2
    needs them collective), the spare ones with zero weight.
    """
    model.eval()
    sums = torch.zeros(2, len(SOURCES), dtype=torch.float64)  # (loss sum, token count) per source
    rounds = math.ceil(len(batches) / ddp.world_size)
    for j in range(rounds):
        index = j * ddp.world_size + ddp.rank
        weight = 1.0 if index < len(batches) else 0.0
        batch = _to_device(batches[min(index, len(batches) - 1)], device)
        with _autocast(device):
            out = model(batch["input_ids"], images=batch["images"], doc_ids=batch["doc_ids"],
                        position_ids=batch["position_ids"])
        logits = out.logits.float()
        ce = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX,
                             reduction="none").view(batch["labels"].shape)  # (B, T)
        mask = batch["labels"] != IGNORE_INDEX
        per_row_loss = (ce * mask).sum(dim=1).double().cpu()
        per_row_count = mask.sum(dim=1).double().cpu()
        source = batch["source"].cpu()
        sums[0].index_add_(0, source, per_row_loss * weight)
        sums[1].index_add_(0, source, per_row_count * weight)
    if ddp.world_size > 1:
        reduced = sums.to(device)
        dist.all_reduce(reduced)
        sums = reduced.cpu()
    model.train()
    by_source = {name: float(sums[0, i] / sums[1, i]) for i, name in enumerate(SOURCES) if sums[1, i] > 0}
    overall = float(sums[0].sum() / sums[1].sum()) if sums[1].sum() > 0 else float("nan")
    return overall, by_source


# ------------------------------------------------------------------------------------ train
def build_model(config: TrainConfig, device: torch.device):
    """The MM1 of a (resolved) config, initialised from ``config.seed``, then parallelized.

    Initialisation is the model's own ``init_weights`` on the full model (on the host, then
    moved to the device), so every rank holds
    the same weights before FSDP2 shards them and a run's weights do not depend on its world
    size. The exception is a multi-GPU run of a model with untied embeddings (the paper sizes):
    it is built on the meta device, sharded, then initialised shard by shard on the GPU, because
    a full fp32 copy per rank would not fit in host memory at 30B.
    """
    from mm1model.model import MM1
    from mm1model.parallelize import parallelize

    mcfg = model_config(config)
    ranks = dist.get_world_size() if dist.is_initialized() else 1
    meta = device.type == "cuda" and ranks > 1 and not mcfg.lm.tie_embeddings
    torch.manual_seed(config.seed)
    with torch.device("meta" if meta else "cpu"):
        model = MM1(mcfg)  # the constructor runs init_weights from the seed just set
    if not meta:
        model.to(device)
    parallelize(model, device_type=device.type, activation_checkpointing=config.activation_checkpointing,
                compile=config.compile)
    if meta:
        model.to_empty(device=device)
        torch.manual_seed(config.seed)
        model.init_weights()
    return model, mcfg


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with MM1's decoupled weight decay (config resolved), in the parameter groups of the
    model's parametrization (:func:`mm1model.parametrization.param_groups`).

    Under the standard parametrization (the default) there are two groups: ``decay`` (matrices)
    and ``no_decay`` (norms, biases, i.e. every parameter with fewer than 2 dimensions, and
    embeddings: token embeddings, hence a tied head, and learned position embeddings). muP and
    CompleteP add groups whose ``lr_mult`` the schedule scales (see :func:`set_lr`).
    """
    from mm1model.parametrization import param_groups

    wd = torch_weight_decay(config.weight_decay, config.lr)
    groups = param_groups(model, model.config, config.lr, wd, config.eps)
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps, weight_decay=wd)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the scheduled LR ``lr`` (= peak x s(t)) relatively: each group runs ``lr x lr_mult``."""
    from mm1model.parametrization import set_group_lrs

    set_group_lrs(optimizer, lr)


def _read_final_result(run_dir: Path) -> TrainResult | None:
    try:
        data = records.read_json(run_dir / "result.json")
    except (FileNotFoundError, ValueError):
        return None
    if data.get("status") not in FINAL_STATUSES:
        return None
    return from_dict(TrainResult, data)


def _check_same_run(run_dir: Path, resolved: TrainConfig) -> None:
    try:
        recorded = records.read_json(run_dir / "config.json")
    except (FileNotFoundError, ValueError):
        return
    now = to_dict(resolved)
    before = {k: v for k, v in recorded.items() if k not in RECORD_KEYS}
    differ = sorted(k for k in set(now) | set(before)
                    if k not in RESUMABLE_CHANGES and records.dumps(now.get(k)) != records.dumps(before.get(k)))
    if differ:
        raise ConfigError(f"run_dir {run_dir} holds a different run (differs in {', '.join(differ)}); "
                          "use a new run_dir")


def train(config: TrainConfig) -> TrainResult:
    """Train (or resume, or return the finished result of) the run in ``config.run_dir``.

    Raises ConfigError before anything is written for a bad config; any other exception writes
    a ``failed`` result.json and is re-raised. See the module docstring for the records.
    """
    run_dir = Path(config.run_dir)
    done = _read_final_result(run_dir)
    if done is not None:
        return done
    config = resolve(config)
    _check_same_run(run_dir, config)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device_type = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ddp = init_distributed(device_type)
    try:
        return _train(config, run_dir, device_type, ddp)
    finally:
        if ddp.owns_group:
            # Without a barrier a fast rank can tear down gloo while another still sends
            # ("terminate called without an active exception", 1 run in 3 here).
            dist.barrier()
            dist.destroy_process_group()


def _lanes_of(config: TrainConfig, ddp: Dist) -> tuple[int, list[int]]:
    micro = config.micro_batch_size or config.batch_size // ddp.world_size
    if config.batch_size % (micro * ddp.world_size):
        raise ConfigError(f"batch_size {config.batch_size} cannot be split into micro-batches of {micro} "
                          f"over {ddp.world_size} ranks")
    n_lanes = config.batch_size // micro
    return micro, list(range(ddp.rank, n_lanes, ddp.world_size))


def _train(config: TrainConfig, run_dir: Path, device_type: str, ddp: Dist) -> TrainResult:
    from mm1model.counting import flops_per_token, image_flops, param_counts

    micro, my_lanes = _lanes_of(config, ddp)
    n_lanes = config.batch_size // micro
    device = torch.device(device_type, ddp.local_rank) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    mcfg = model_config(config)
    counts = param_counts(mcfg)
    seq_len = config.data.seq_len
    tokens_per_step = config.batch_size * seq_len
    started = time.time()
    state = {"step": 0, "initial_loss": None, "best_val_loss": None, "wall_s": 0.0}
    preemption = Preemption()
    result_base = dict(params=counts.params, lr=config.lr, size=config.size, batch_size=config.batch_size,
                       seq_len=seq_len, seed=config.seed, run_dir=str(run_dir))
    try:
        # Everything that can fail for a bad config or a missing corpus runs before the first
        # write, so such a failure (a ConfigError) leaves no files behind.
        model, _ = build_model(config, device)
        optimizer = build_optimizer(model, config)
        lanes = {i: PackedStream(config.data, rank=i, world_size=n_lanes, split="train") for i in my_lanes}
        val = validation_batches(config.data, config.eval_sequences, config.eval_batch_size or micro)
        if ddp.is_main:
            (run_dir / "result.json").unlink(missing_ok=True)  # a stale failed result: running now
            records.write_json(run_dir / "config.json", {
                **to_dict(config), "params": counts.params, "param_counts": dataclasses.asdict(counts),
                "model_config": to_dict(mcfg), "code_version": code_version(), "world_size": ddp.world_size})
        ckpt = load_checkpoint(run_dir)
        if ckpt is not None:
            _restore(ckpt, model, optimizer, lanes, ddp, n_lanes)
            state = {k: ckpt[k] for k in state}
        if ddp.is_main:
            rows = [r for r in records.read_jsonl(run_dir / "metrics.jsonl") if r.get("step", 0) <= state["step"]]
            records.write_jsonl(run_dir / "metrics.jsonl", rows)
            records.append_jsonl(run_dir / "events.jsonl", {
                "event": "start", "step": state["step"], "time": time.time(), "pid": os.getpid(),
                "world_size": ddp.world_size, "resumed": ckpt is not None})
        preemption.install()
        result = _loop(config, run_dir, model, optimizer, lanes, val, state, ddp, device, preemption,
                       flops_per_token(mcfg, seq_len), image_flops(mcfg), tokens_per_step, result_base)
    except ConfigError:
        raise
    except Exception as err:
        if ddp.is_main:
            wall = state["wall_s"] + time.time() - started
            failed = TrainResult(status="failed", final_val_loss=None, best_val_loss=state["best_val_loss"],
                                 val_loss_by_source={}, steps=state["step"], tokens=state["step"] * tokens_per_step,
                                 wall_s=wall, error=f"{type(err).__name__}: {err}".splitlines()[0][:500],
                                 **result_base)
            records.write_json(run_dir / "result.json", dataclasses.asdict(failed))
        raise
    finally:
        preemption.restore()
    return result


def _restore(ckpt: dict[str, Any], model, optimizer, lanes: dict[int, PackedStream], ddp: Dist, n_lanes: int) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    if len(ckpt["lanes"]) != n_lanes:
        raise ConfigError(f"the checkpoint has {len(ckpt['lanes'])} data lanes, this run {n_lanes}: "
                          "keep batch_size / micro_batch_size as it was")
    set_state_dict(model, optimizer, model_state_dict=ckpt["model"], optim_state_dict=ckpt["optimizer"],
                   options=StateDictOptions(full_state_dict=True))
    for i, stream in lanes.items():
        stream.load_state_dict(ckpt["lanes"][i])
    if len(ckpt["rng"]) == ddp.world_size:
        set_rng_state(ckpt["rng"][ddp.rank])


def _loop(config: TrainConfig, run_dir: Path, model, optimizer, lanes, val, state, ddp: Dist,
          device: torch.device, preemption: Preemption, text_flops: float, img_flops: float,
          tokens_per_step: int, result_base: dict[str, Any]) -> TrainResult:
    peak = peak_flops_per_s(device, config.peak_flops)
    metrics, events = run_dir / "metrics.jsonl", run_dir / "events.jsonl"
    n_micro = len(lanes)
    progress = None
    if ddp.is_main and sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(total=config.steps, initial=state["step"], desc=f"{config.size} lr={config.lr:.2e}",
                        unit="step", dynamic_ncols=True)
    wall_at_start, t_start = state["wall_s"], time.time()
    status, diverged_at = "ok", None
    final_loss, by_source = None, {}
    model.train()

    micro_size = config.batch_size // (n_micro * ddp.world_size)
    while state["step"] < config.steps:
        step = state["step"]
        t0 = time.time()
        lr = config.lr * lr_multiplier(step, config.warmup_steps, config.decay_steps, config.min_lr_ratio)
        set_lr(optimizer, lr)
        optimizer.zero_grad(set_to_none=True)
        micro_batches = [stream.next_batch(micro_size) for stream in lanes.values()]
        images = sum(len(b["images"]) for b in micro_batches)
        loss_sum = forward_backward(model, iter(micro_batches), n_micro, device)
        grad_norm = clip_gradients(model, config.grad_clip)
        # one small all-reduce: loss sum, micro-batch count, images, signal flag
        stats = torch.tensor([float(loss_sum), n_micro, images, float(bool(preemption.received))],
                             dtype=torch.float64)
        if ddp.world_size > 1:
            stats = stats.to(device)
            dist.all_reduce(stats)
            stats = stats.cpu()
        loss = float(stats[0] / stats[1])
        if state["initial_loss"] is None:
            state["initial_loss"] = loss
        if not math.isfinite(loss) or (step >= config.warmup_steps
                                       and loss > config.divergence_factor * state["initial_loss"]):
            status, diverged_at = "diverged", step + 1
        else:
            optimizer.step()
        state["step"] = step + 1
        dt = time.time() - t0
        state["wall_s"] = wall_at_start + time.time() - t_start
        flops = text_flops * tokens_per_step + img_flops * float(stats[2])
        row = {"step": state["step"], "lr": lr, "loss": loss, "grad_norm": float(grad_norm),
               "tokens": state["step"] * tokens_per_step, "tokens_per_s": tokens_per_step / dt,
               "mfu": flops / dt / (peak * ddp.world_size) if peak else None, "wall_s": state["wall_s"]}
        if ddp.is_main:
            records.append_jsonl(metrics, row)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            elif state["step"] % config.log_interval == 0 or status != "ok":
                print(f"[{config.size} lr={config.lr:.2e}] step {state['step']}/{config.steps} loss {loss:.4f} "
                      f"lr {lr:.3e} grad_norm {float(grad_norm):.3f} tok/s {row['tokens_per_s']:.0f}",
                      file=sys.stderr, flush=True)
        if status == "diverged":
            if ddp.is_main:
                records.append_jsonl(events, {"event": "diverged", "step": state["step"], "loss": loss,
                                              "initial_loss": state["initial_loss"], "time": time.time()})
            break
        last = state["step"] == config.steps
        if (config.eval_interval and state["step"] % config.eval_interval == 0) or last:
            final_loss, by_source = evaluate(model, val, device, ddp)
            if math.isfinite(final_loss) and (state["best_val_loss"] is None or final_loss < state["best_val_loss"]):
                state["best_val_loss"] = final_loss
            if ddp.is_main:
                records.append_jsonl(metrics, {"step": state["step"], "val_loss": final_loss,
                                               "val_loss_by_source": by_source})
        # a signal during the last step is moot: the run is about to write its final result
        signalled = bool(stats[3]) and not last
        if signalled or (config.checkpoint_interval and state["step"] % config.checkpoint_interval == 0
                         and not last):
            save_checkpoint(run_dir, model, optimizer, state, lanes, ddp, config.keep_checkpoints)
            if ddp.is_main:
                records.append_jsonl(events, {"event": "checkpoint", "step": state["step"], "time": time.time()})
        if signalled:
            if ddp.is_main:
                records.append_jsonl(events, {"event": "signal", "step": state["step"], "time": time.time(),
                                              "signals": list(preemption.received)})
            preemption.chain()
    if progress is not None:
        progress.close()
    if status == "ok" and final_loss is None:  # steps == 0, or resumed at the end
        final_loss, by_source = evaluate(model, val, device, ddp)
    state["wall_s"] = wall_at_start + time.time() - t_start  # the final evaluation included
    result = TrainResult(status=status, final_val_loss=final_loss if status == "ok" else None,
                         best_val_loss=state["best_val_loss"], val_loss_by_source=by_source if status == "ok" else {},
                         steps=state["step"], tokens=state["step"] * tokens_per_step, wall_s=state["wall_s"],
                         diverged_at_step=diverged_at, **result_base)
    if ddp.is_main:
        records.write_json(run_dir / "result.json", dataclasses.asdict(result))
        records.append_jsonl(events, {"event": "end", "status": status, "step": state["step"], "time": time.time()})
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m mm1model.train CONFIG.json [--run-dir DIR]``: train, print result.json's content.

    Exit 0 for a final result (ok or diverged), 2 for a bad config (one line on stderr), 128 + N
    after a checkpoint on signal N, and Python's traceback exit 1 for a failure.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mm1model.train", description=main.__doc__)
    parser.add_argument("config", help="TrainConfig JSON (a run's config.json works too)")
    parser.add_argument("--run-dir", help="override run_dir")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        if args.run_dir:
            config = dataclasses.replace(config, run_dir=args.run_dir)
        result = train(config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(records.dumps(dataclasses.asdict(result)))
    return 0  # ok and diverged are both final outcomes; a failure raised above


if __name__ == "__main__":
    sys.exit(main())
