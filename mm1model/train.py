"""The bundled trainer: MM1's pre-training recipe, exact resume, divergence detection, FSDP2.

``train(TrainConfig) -> TrainResult`` is what every sweep cell and every launch runs; from a
shell, ``python -m mm1model.train CONFIG.json`` (or under ``torchrun``).

The run itself is :class:`mm1model.train_config.TrainConfig` (re-exported here); its defaults
are MM1's recipe (McKinzie et al. 2024, appendix B; the numbers in :mod:`mm1model.paper`):

* AdamW, betas (0.9, 0.95), gradient clipping at global norm 1.0 (``TrainConfig.optimizer``),
  z-loss from the size table (0; 1e-4 at 30B) unless ``z_loss`` is set.
* Schedule: linear warmup over ``optimizer.warmup_steps`` (2000) then cosine decay to
  ``optimizer.min_lr_ratio`` (10%) of the peak ``optimizer.lr`` at ``optimizer.decay_steps``
  (200k, counted from step 0, warmup included), flat after. Or ``optimizer.schedule = "wsd"``
  (Hagele et al. 2024): the same warmup, the peak until ``optimizer.cooldown_start``, then a
  ``linear`` or ``1-sqrt`` cooldown over the last ``cooldown_fraction`` (20%) of
  ``decay_steps`` to the same floor. See :func:`lr_multiplier`. The peak LR is always given by
  the caller: the trainer has no law of its own.
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
* ``events.jsonl``: one ``start`` row per trainer start (with the step it resumed from, and
  ``init_from`` when it started from another run's checkpoint), plus ``checkpoint``, ``signal``,
  ``diverged`` and ``end`` rows. Never truncated.
* ``result.json``: :class:`TrainResult`, written when the run ends (ok, diverged or failed).
* ``checkpoints/step_XXXXXXXX/``: the last ``keep_checkpoints`` sharded checkpoints, plus those of
  ``save_steps``, kept to the end (:mod:`mm1model.checkpoint`).

A run directory whose ``result.json`` says ok or diverged is final: :func:`train` returns it at
once. Otherwise :func:`train` resumes from the newest readable checkpoint (a corrupt one is
skipped with a warning) and, on CPU with a fixed seed and thread count, reproduces the losses of
an uninterrupted run bit for bit.

Branching: a run with ``init_from`` and no readable checkpoint of its own starts from that
checkpoint of another run (a wsd trunk's ``save_steps`` checkpoint at this run's
``cooldown_start``): its tensors, data lanes, RNG and loop state, and the source run's
``metrics.jsonl`` rows up to that step, so the branch's records read like a straight run's, which
on CPU it matches bit for bit. From there the run follows its own config; the source's AdamW
settings in the checkpoint are replaced by its own. A source whose config would not have
trained the same first steps (another schedule before the branch step, another model, batch,
seed or data) is warned about, not refused.

Preemption: SIGTERM, SIGUSR1 and SIGUSR2 set a flag; at the next step boundary the trainer
checkpoints, then calls the handler installed before it (submitit's requeue handler), or exits
with 128 + the signal number when there was none (no result.json: the run is resumable).

Data parallelism: rank and world size come from the environment (``torchrun``, or
``submitit.helpers.TorchDistributedEnvironment().export()``); gloo on CPU, nccl on GPU; FSDP2 is
applied by :mod:`mm1model.parallelize`. The global batch is ``batch_size / micro_batch_size``
micro-batches, each drawn from its own data lane (``PackedStream(rank=lane,
world_size=n_lanes)``); rank r runs lanes r, r + world, ... with gradient accumulation. So the
sequences of a step do not depend on the world size, and a (sharded, resharding) checkpoint resumes
at any world size that divides the number of lanes. With ``data.num_workers`` > 0 the lanes are
packed ahead of the GPU in DataLoader worker processes, into pinned memory on CUDA
(:mod:`mm1model.data.loader`); the checkpoint holds every worker's state, so resuming stays exact.
"""
from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist

from mm1model import accelerator, records
from mm1model.checkpoint import (PREEMPTION_SIGNALS, Checkpointer, Preemption, UnreadableCheckpoint, checkpoint_paths,
                                  load_checkpoint, load_checkpoint_from)
from mm1model.config import ConfigError, from_dict, to_dict
from mm1model.counting import flops_per_token, image_flops, param_counts
from mm1model.data import SOURCES, PackedStream, validation_batches
from mm1model.data.images import normalise_images
from mm1model.data.loader import LaneBatches
from mm1model.distributed import Dist, init_distributed
from mm1model.model import MM1
from mm1model.parallelize import init_sharded, parallelize
from mm1model.parametrization import freeze_towers, init_parametrized, param_groups, set_group_lrs
from mm1model.pretrained import load_pretrained
from mm1model.shard_loading import LoadReport
from mm1model.trackers import TensorBoardLog
from mm1model.train_config import (FINAL_STATUSES, RECORD_KEYS, RESUMABLE_CHANGES, InitConfig, TrainConfig, TrainResult,
                                   load_config, lr_multiplier, model_config, resolve, torch_weight_decay)

# Re-exported: `from mm1model.train import TrainConfig, train` is the trainer's public API.
__all__ = ["TrainConfig", "TrainResult", "load_config", "lr_multiplier", "main", "model_config", "resolve",
           "torch_weight_decay", "train"]



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
    """Peak dense bf16 FLOP/s of one device: the configured value, else the datasheet value for the
    exact device name (:func:`mm1model.accelerator.device_peak_flops`; None on CPU or an unknown GPU)."""
    return configured if configured is not None else accelerator.device_peak_flops(device)


# ------------------------------------------------------------------------------------ steps
def forward_backward(model: torch.nn.Module, micro_batches: Iterator[dict[str, Any]], n_micro: int,
                     device: torch.device, reduce_every_micro_batch: bool = True) -> torch.Tensor:
    """Accumulate gradients of the mean loss over ``n_micro`` micro-batches; returns the sum of
    their losses (a detached scalar).

    Under FSDP2 gradients are reduce-scattered after every micro-batch by default (as torchtitan
    does), so a rank only ever holds its shard of the gradients (4 bytes x parameters / world).
    ``reduce_every_micro_batch=False`` reduces on the last micro-batch only: one reduce-scatter
    per step instead of one per micro-batch, but FSDP2 then keeps unsharded fp32 gradients of the
    whole model between micro-batches (4 bytes x all parameters per rank; measured in
    tests/test_fsdp_memory.py), which the planner counts only when asked for it.
    """
    fsdp = hasattr(model, "set_requires_gradient_sync")
    loss_sum = torch.zeros((), device=device)
    for i, batch in enumerate(micro_batches):
        if fsdp:
            model.set_requires_gradient_sync(reduce_every_micro_batch or i == n_micro - 1)
        batch = accelerator.to_device(batch, device)
        images = normalise_images(batch["images"])  # uint8 pixels -> the ViT's floats, on the device
        with accelerator.autocast(device):
            out = model(batch["input_ids"], images=images, labels=batch["labels"],
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
    needs them collective), the spare ones with zero weight. The head and the cross-entropy run in
    chunks (``per_row``): evaluation holds no (B, T, V) logits, so it needs less memory than a
    training step and the planner's training estimate covers it.
    """
    model.eval()
    sums = torch.zeros(2, len(SOURCES), dtype=torch.float64)  # (loss sum, token count) per source
    rounds = math.ceil(len(batches) / ddp.world_size)
    for j in range(rounds):
        index = j * ddp.world_size + ddp.rank
        weight = 1.0 if index < len(batches) else 0.0
        batch = accelerator.to_device(batches[min(index, len(batches) - 1)], device)
        with accelerator.autocast(device):
            out = model(batch["input_ids"], images=normalise_images(batch["images"]), labels=batch["labels"],
                        doc_ids=batch["doc_ids"], position_ids=batch["position_ids"], per_row=True)
        per_row_loss = out.row_ce_sum.double().cpu()  # (B,)
        per_row_count = out.row_tokens.double().cpu()
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
def sharded_build(config: TrainConfig, device: torch.device, ranks: int) -> bool:
    """Whether :func:`build_model` builds on the meta device and materialises only each rank's
    shards: with more than one rank on GPUs (a full fp32 copy per rank would not fit in host
    memory at 30B), and with more than one rank on CPUs when ``config.init`` loads a checkpoint
    (each rank then reads only its rows of it). A CPU run from scratch builds on the host: the
    same weights (:func:`mm1model.parallelize.init_sharded` replays the host build), at less cost."""
    return ranks > 1 and (device.type == "cuda" or config.init.pretrained)


def build_model(config: TrainConfig, device: torch.device, report: LoadReport | None = None):
    """The MM1 of a (resolved) config, initialised from ``config.seed``, then parallelized.

    On the host (one rank, or a CPU run from scratch): the model's constructor (which ends with
    ``init_weights``) from the seed on the full model, then the parametrization's init
    (:func:`init_parametrized`), so every rank holds the same weights before FSDP2 shards them.
    On the meta path (:func:`sharded_build`: several GPU ranks, or several CPU ranks loading a
    checkpoint) it is built on the meta device, frozen, parallelized (activation checkpointing,
    compile, FSDP2), materialised with ``to_empty`` (this rank's shards only), then initialised
    shard by shard to the host build's weights (:func:`init_sharded` with ``as_constructed``),
    tied embeddings included. Either way a run's weights do not depend on its world size.

    With ``config.init`` the pretrained towers are then loaded over that init
    (:func:`mm1model.pretrained.load_pretrained`: into the full model on the host, or tensor by
    tensor into each rank's shards on the meta path, so no rank reads or holds the whole
    checkpoint) and the frozen towers frozen. ``report``, if given, is filled with what the load
    did on this rank (:class:`~mm1model.shard_loading.LoadReport`: bytes read, ...).
    """
    mcfg = model_config(config)
    ranks = dist.get_world_size() if dist.is_initialized() else 1
    meta = sharded_build(config, device, ranks)
    report = report if report is not None else LoadReport()
    torch.manual_seed(config.seed)
    with torch.device("meta" if meta else "cpu"):
        model = MM1(mcfg)  # the constructor runs init_weights from the seed just set
    if not meta:
        init_parametrized(model)
        load_pretrained(model, config.init.lm, config.init.vit, report)
        model.to(device)
    freeze_towers(model, lm=config.init.freeze_lm, vit=config.init.freeze_vit)
    parallelize(model, device_type=device.type, activation_checkpointing=config.activation_checkpointing,
                compile=config.compile)
    if meta:
        model.to_empty(device=device)
        # each parameter drawn whole and this rank's shard kept; frozen towers are loaded next
        # (InitConfig refuses freezing a tower with no checkpoint), so the parametrization's
        # init skipping them changes nothing
        init_sharded(model, config.seed, as_constructed=True)
        load_pretrained(model, config.init.lm, config.init.vit, report)  # each rank reads its own rows
    return model, mcfg


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with MM1's decoupled weight decay (config resolved), in the parameter groups of the
    model's parametrization (:func:`mm1model.parametrization.param_groups`).

    Under the standard parametrization (the default) there are two groups: ``decay`` (matrices)
    and ``no_decay`` (norms, biases, i.e. every parameter with fewer than 2 dimensions, and
    embeddings: token embeddings, hence a tied head, and learned position embeddings). muP and
    CompleteP add groups whose ``lr_mult`` the schedule scales (see :func:`set_lr`).
    """
    opt = config.optimizer
    wd = torch_weight_decay(opt.weight_decay, opt.lr)
    groups = param_groups(model, model.config, opt.lr, wd, opt.eps)
    return torch.optim.AdamW(groups, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps, weight_decay=wd)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the scheduled LR ``lr`` (= peak x s(t)) relatively: each group runs ``lr x lr_mult``."""
    set_group_lrs(optimizer, lr)


def warm_data(config: TrainConfig) -> None:
    """Build a run's corpus index and validation set into this process's caches
    (:mod:`mm1model.data.stream`), so the trainers a warm sweep worker forks start without
    re-reading the corpus. Best effort: a bad config is left for the run itself to report."""
    try:
        config = resolve(config)
        micro = config.micro_batch_size or config.batch_size
        PackedStream(config.data, rank=0, world_size=config.batch_size // micro, split="train")
        validation_batches(config.data, config.eval_sequences, config.eval_batch_size or micro)
    except (ConfigError, OSError, ValueError):
        return


def _read_final_result(run_dir: Path) -> TrainResult | None:
    try:
        data = records.read_json(run_dir / "result.json")
    except (FileNotFoundError, ValueError):
        return None
    if data.get("status") not in FINAL_STATUSES:
        return None
    return from_dict(TrainResult, data)


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"lr": 1}}`` -> ``{"optimizer.lr": 1}``: differences are named by their full key."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _differing(resolved: TrainConfig, recorded: dict[str, Any], ignored: tuple[str, ...]) -> list[str]:
    """The full keys in which a run's config.json and a config differ, but for ``ignored``."""
    now = _flat(to_dict(resolved))
    before = _flat({k: v for k, v in recorded.items() if k not in RECORD_KEYS})
    # a key recorded before its field existed (e.g. init.freeze_lm) reads as the field's default
    defaults = _flat(to_dict(TrainConfig()))
    return sorted(k for k in set(now) | set(before)
                  if k not in ignored and records.dumps(now.get(k)) != records.dumps(before.get(k, defaults.get(k))))


def _check_same_run(run_dir: Path, resolved: TrainConfig) -> None:
    try:
        recorded = records.read_json(run_dir / "config.json")
    except (FileNotFoundError, ValueError):
        return
    differ = _differing(resolved, recorded, RESUMABLE_CHANGES)
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
    micro, my_lanes = _lanes_of(config, ddp)
    n_lanes = config.batch_size // micro
    device = ddp.device(device_type)
    accelerator.configure(device)  # the process's GPU, TF32 for fp32 matmuls
    mcfg = model_config(config)
    counts = param_counts(mcfg)
    seq_len = config.data.seq_len
    tokens_per_step = config.batch_size * seq_len
    started = time.time()
    state = {"step": 0, "initial_loss": None, "best_val_loss": None, "wall_s": 0.0}
    preemption = Preemption()
    result_base = dict(params=counts.params, lr=config.optimizer.lr, size=config.size, batch_size=config.batch_size,
                       seq_len=seq_len, seed=config.seed, run_dir=str(run_dir))
    try:
        # Everything that can fail for a bad config or a missing corpus runs before the first
        # write, so such a failure (a ConfigError) leaves no files behind.
        model, _ = build_model(config, device)
        optimizer = build_optimizer(model, config)
        lanes = LaneBatches(config.data, my_lanes, n_lanes, micro, pin_memory=device.type == "cuda",
                            ignored_signals=PREEMPTION_SIGNALS)
        val = validation_batches(config.data, config.eval_sequences, config.eval_batch_size or micro)
        # Loading, too, runs before the first write: a bad init_from is a ConfigError like a bad config.
        ckpt = load_checkpoint(run_dir, model, optimizer)
        if ckpt is None and checkpoint_paths(run_dir):  # every checkpoint failed to load, possibly halfway
            model, _ = build_model(config, device)
            optimizer = build_optimizer(model, config)
        branched = ckpt is None and config.init_from is not None
        if branched:
            ckpt = _load_init_from(config, model, optimizer, n_lanes)
        if ckpt is not None:
            _restore(ckpt, lanes, ddp, n_lanes)
            state = {k: ckpt[k] for k in state}
        if ddp.is_main:
            (run_dir / "result.json").unlink(missing_ok=True)  # a stale failed result: running now
            records.write_json(run_dir / "config.json", {
                **to_dict(config), "params": counts.params, "param_counts": dataclasses.asdict(counts),
                "model_config": to_dict(mcfg), "code_version": code_version(), "world_size": ddp.world_size})
            # a branch's curve starts with its source's first steps, as a straight run's would
            source = source_run_dir(config.init_from) if branched else run_dir
            rows = [r for r in records.read_jsonl(source / "metrics.jsonl") if r.get("step", 0) <= state["step"]]
            records.write_jsonl(run_dir / "metrics.jsonl", rows)
            start = {"event": "start", "step": state["step"], "time": time.time(), "pid": os.getpid(),
                     "world_size": ddp.world_size, "resumed": ckpt is not None and not branched}
            if branched:
                start["init_from"] = config.init_from
            records.append_jsonl(run_dir / "events.jsonl", start)
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


def source_run_dir(init_from: str | os.PathLike) -> Path:
    """The run directory that wrote checkpoint ``init_from`` (``RUN_DIR/checkpoints/step_XXXXXXXX``)."""
    return Path(init_from).parent.parent


def _load_init_from(config: TrainConfig, model, optimizer, n_lanes: int) -> dict[str, Any]:
    """Collective: load ``config.init_from`` into a fresh model and optimizer; ConfigError when
    it cannot start this run. Then put this run's AdamW settings back in the parameter groups:
    the checkpoint's are its source's."""
    path = Path(config.init_from)
    if not path.is_dir():
        raise ConfigError(f"init_from {path} does not exist or is not a directory: give a checkpoint directory "
                          "such as TRUNK_RUN_DIR/checkpoints/step_00000480")
    source_config = source_run_dir(path) / "config.json"
    trunk_init = records.read_json(source_config).get("init", {}) if source_config.is_file() else {}
    if {**to_dict(InitConfig()), **trunk_init} != to_dict(config.init):
        # the weights come from the trunk: an init other than the trunk's would be recorded but never loaded
        raise ConfigError(f"init {to_dict(config.init)} disagrees with the init {trunk_init} of init_from's run "
                          f"{source_run_dir(path)}: a branch starts from its trunk's weights; give the trunk's init")
    own_groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    try:
        ckpt = load_checkpoint_from(path, model, optimizer)
    except UnreadableCheckpoint as err:
        raise ConfigError(f"init_from {path} is not a checkpoint this run can load ({err.reason})") from None
    if ckpt["step"] >= config.steps:
        raise ConfigError(f"init_from {path} holds step {ckpt['step']}, not before this run's steps {config.steps}: "
                          "branch from an earlier checkpoint")
    if len(ckpt["lanes"]) != n_lanes:
        raise ConfigError(f"init_from {path} has {len(ckpt['lanes'])} data lanes, this run {n_lanes}: use the "
                          "source run's batch_size / micro_batch_size")
    for group, own in zip(optimizer.param_groups, own_groups):
        group.update(own)
    _warn_unlike_source(config, source_run_dir(path), ckpt["step"])
    return ckpt


# What a branch may change from its source without changing its first steps: what a resume may,
# and the schedule's shape after the branch point (checked step by step instead).
_BRANCH_CHANGES = RESUMABLE_CHANGES + ("init_from", "optimizer.schedule", "optimizer.decay_steps",
                                       "optimizer.min_lr_ratio", "optimizer.cooldown_fraction",
                                       "optimizer.cooldown_shape")


def _warn_unlike_source(config: TrainConfig, source: Path, step: int) -> None:
    """Warn when the source run (its config.json, if any) would not have trained this run's first
    ``step`` updates: another schedule before ``step`` (a branch after its cooldown start), or
    another model, batch, seed, data or AdamW setting."""
    try:
        recorded = records.read_json(source / "config.json")
        source_config = load_config(source / "config.json")
    except (FileNotFoundError, ValueError):  # ConfigError is a ValueError: an unreadable source is not ours to judge
        return
    differ = _differing(config, recorded, _BRANCH_CHANGES)
    late = next((t for t in range(step) if source_config.optimizer.lr_at(t) != config.optimizer.lr_at(t)), None)
    if late is not None:
        differ.append(f"the scheduled LR from update {late} on")
    if differ:
        warnings.warn(f"init_from: {source} differs from this run in {', '.join(differ)}, so this branch does not "
                      f"follow a straight run of its config", UserWarning, stacklevel=3)


def _restore(ckpt: dict[str, Any], lanes: LaneBatches, ddp: Dist, n_lanes: int) -> None:
    """The data lanes' and RNG states of a loaded checkpoint (the tensors are loaded already)."""
    if len(ckpt["lanes"]) != n_lanes:
        raise ConfigError(f"the checkpoint has {len(ckpt['lanes'])} data lanes, this run {n_lanes}: "
                          "keep batch_size / micro_batch_size as it was")
    lanes.load_lane_states(ckpt["lanes"])
    if len(ckpt["rng"]) == ddp.world_size:  # RNG streams are per rank: only the same world size continues them
        accelerator.set_rng_state(ckpt["rng"][ddp.rank])


def _loop(config: TrainConfig, run_dir: Path, model, optimizer, lanes, val, state, ddp: Dist,
          device: torch.device, preemption: Preemption, text_flops: float, img_flops: float,
          tokens_per_step: int, result_base: dict[str, Any]) -> TrainResult:
    peak = peak_flops_per_s(device, config.peak_flops)
    metrics, events = run_dir / "metrics.jsonl", run_dir / "events.jsonl"
    n_micro = len(lanes)
    progress = None
    if ddp.is_main and sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(total=config.steps, initial=state["step"], desc=f"{config.size} lr={config.optimizer.lr:.2e}",
                        unit="step", dynamic_ncols=True)
    board = TensorBoardLog(run_dir, state["step"], enabled=ddp.is_main and config.tensorboard)
    async_save = config.async_checkpoint if config.async_checkpoint is not None else device.type == "cuda"
    checkpointer = Checkpointer(run_dir, ddp, config.keep_checkpoints, async_save=async_save,
                                kept_steps=config.save_steps)
    wall_at_start, t_start = state["wall_s"], time.time()
    status, diverged_at = "ok", None
    final_loss, by_source = None, {}
    model.train()

    while state["step"] < config.steps:
        step = state["step"]
        t0 = time.time()
        lr = config.optimizer.lr_at(step)
        set_lr(optimizer, lr)
        optimizer.zero_grad(set_to_none=True)
        micro_batches = lanes.next_step()
        images = sum(len(b["images"]) for b in micro_batches)
        loss_sum = forward_backward(model, iter(micro_batches), n_micro, device, config.reduce_every_micro_batch)
        grad_norm = clip_gradients(model, config.optimizer.grad_clip)
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
        if not math.isfinite(loss) or (step >= config.optimizer.warmup_steps
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
            board.step(row, optimizer)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            elif state["step"] % config.log_interval == 0 or status != "ok":
                print(f"[{config.size} lr={config.optimizer.lr:.2e}] step {state['step']}/{config.steps} loss {loss:.4f} "
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
                board.evaluation(state["step"], final_loss, by_source)
        # a signal during the last step is moot: the run is about to write its final result
        signalled = bool(stats[3]) and not last
        interval = config.checkpoint_interval and state["step"] % config.checkpoint_interval == 0
        if signalled or ((interval or state["step"] in config.save_steps) and not last):
            # the preemption checkpoint must be on disk before the signal is handed on
            checkpointer.save(model, optimizer, state, lanes, blocking=signalled)
            board.flush()
            if ddp.is_main:
                records.append_jsonl(events, {"event": "checkpoint", "step": state["step"], "time": time.time()})
        if signalled:
            if ddp.is_main:
                records.append_jsonl(events, {"event": "signal", "step": state["step"], "time": time.time(),
                                              "signals": list(preemption.received)})
            preemption.chain()
    checkpointer.finish()
    lanes.close()
    board.close()
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
