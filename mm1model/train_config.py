"""What one training run is: :class:`TrainConfig` (with its :class:`OptimizerConfig`), what it
leaves (:class:`TrainResult`), and the schedule and weight-decay arithmetic they share.

Defaults are MM1's pre-training recipe, read from :mod:`mm1model.paper` (batch 512 x 4096,
200k steps, warmup 2000, cosine to 10%, AdamW (0.9, 0.95), clip 1.0, lambda = 0.1 x peak). The
other schedule, ``wsd`` (warmup, stable, decay; Hagele et al. 2024), holds the peak until its
cooldown, so runs to several horizons can share one trunk (``TrainConfig.save_steps`` and
``TrainConfig.init_from``).
The peak LR has no default: whoever starts a run says which LR it trains at (``scaling sweep``
per cell, ``scaling launch`` from a fitted law); the trainer never falls back to a law of its own.

:func:`resolve` fills the values derived from others (lambda from the peak LR, the data's
image geometry from the model); :func:`model_config` gives the :class:`~mm1model.model.MM1Config`
a run trains (the size's, its ``model`` overrides, its parametrization's forward multipliers).
"""
from __future__ import annotations

import dataclasses
import math
import os
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any

from mm1model import paper, records
from mm1model.config import ConfigError, from_dict, to_dict
from mm1model.data import DataConfig
from mm1model.model import MM1Config
from mm1model.parametrization import parametrize
from mm1model.pretrained import check_lm_shape, check_vit_shape, read_clip, read_llama
from mm1model.sizes import get_size

SCHEDULES = ("cosine", "wsd")
COOLDOWN_SHAPES = ("linear", "1-sqrt")
FINAL_STATUSES = ("ok", "diverged")
# Keys config.json adds to the TrainConfig fields; load_config drops them.
RECORD_KEYS = ("params", "param_counts", "model_config", "code_version", "world_size")
# Fields that may change between a run and its resumption without changing its trajectory
# (``save_steps`` only adds checkpoints, like ``checkpoint_interval``; ``data.prefetch`` only how far
# the loader workers run ahead, while ``data.num_workers`` changes the sequences).
RESUMABLE_CHANGES = ("run_dir", "threads", "steps", "eval_interval", "checkpoint_interval", "keep_checkpoints",
                     "save_steps", "async_checkpoint", "log_interval", "tensorboard", "compile",
                     "activation_checkpointing", "data.prefetch")


@dataclass
class OptimizerConfig:
    """AdamW and its LR schedule: the one place a run's peak LR lives.

    ``lr``: the peak learning rate (required before training; see the module docstring).
    ``schedule``: ``cosine`` (MM1's): linear warmup over ``warmup_steps``, then a cosine to
    ``min_lr_ratio`` x peak at ``decay_steps`` (counted from step 0, warmup included), flat after.
    ``wsd``: the same warmup, the peak until :attr:`cooldown_start`, then a cooldown to
    ``min_lr_ratio`` x peak at ``decay_steps``, flat after (:func:`lr_multiplier`).
    ``cooldown_fraction``: the cooldown's length as a fraction of ``decay_steps``, in (0, 1]
    (Hagele et al. 2024's 20% by default); ``cooldown_shape``: ``linear`` or ``1-sqrt``
    (:data:`COOLDOWN_SHAPES`). Both are validated under either schedule but used by wsd only.
    ``weight_decay``: lambda, the per-step decoupled decay at the peak
    of the schedule (the decay at step t is ``lambda x lr_multiplier(t)``); None = MM1's
    ``0.1 x lr``. ``grad_clip``: the global L2 norm gradients are clipped to.
    """

    lr: float | None = None
    schedule: str = paper.SCHEDULE
    min_lr_ratio: float = paper.MIN_LR_RATIO
    warmup_steps: int = paper.WARMUP_STEPS
    decay_steps: int = paper.DECAY_STEPS
    weight_decay: float | None = None
    betas: tuple[float, float] = paper.ADAM_BETAS
    eps: float = paper.ADAM_EPS
    grad_clip: float = paper.GRAD_CLIP
    cooldown_fraction: float = paper.WSD_COOLDOWN_FRACTION
    # linear, the plain shape; Hagele et al. 2024 measured 1-sqrt slightly better: a run opts in
    cooldown_shape: str = "linear"

    def __post_init__(self) -> None:
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if self.weight_decay is not None and not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0 or self.decay_steps < self.warmup_steps:
            raise ConfigError(f"need 0 <= warmup_steps <= decay_steps, got {self.warmup_steps} and {self.decay_steps}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise ConfigError(f"eps must be > 0, got {self.eps}")
        if self.grad_clip <= 0:
            raise ConfigError(f"grad_clip must be > 0, got {self.grad_clip}")
        if not 0 < self.cooldown_fraction <= 1:
            raise ConfigError(f"cooldown_fraction must be in (0, 1], got {self.cooldown_fraction}")
        if self.cooldown_shape not in COOLDOWN_SHAPES:
            raise ConfigError(f"unknown cooldown_shape {self.cooldown_shape!r}; valid: {', '.join(COOLDOWN_SHAPES)}")
        if self.schedule == "wsd" and self.cooldown_start < self.warmup_steps:
            raise ConfigError(f"the wsd cooldown starts at step {self.cooldown_start} (decay_steps "
                              f"{self.decay_steps} x (1 - cooldown_fraction {self.cooldown_fraction})), before "
                              f"warmup_steps {self.warmup_steps} end: shorten the warmup or the cooldown")

    @property
    def cooldown_start(self) -> int:
        """The update (0-based) the decay starts from, the last one at the peak: for wsd
        ``decay_steps - round(cooldown_fraction x decay_steps)`` (Python's round: ties to even);
        for cosine ``warmup_steps``. A wsd run to horizon T and a longer one agree on every update
        before T's ``cooldown_start``, so T can branch from the longer run's checkpoint at that
        step (``TrainConfig.init_from``)."""
        if self.schedule == "wsd":
            return _wsd_cooldown_start(self.decay_steps, self.cooldown_fraction)
        return self.warmup_steps

    def lr_at(self, step: int) -> float:
        """The scheduled LR of update ``step`` (0-based): peak x :func:`lr_multiplier`."""
        return self.lr * lr_multiplier(step, self.warmup_steps, self.decay_steps, self.min_lr_ratio, self.schedule,
                                       self.cooldown_fraction, self.cooldown_shape)


@dataclass
class InitConfig:
    """Where a run's weights start (MM1: both towers pretrained, trained unfrozen).

    ``lm``: a Hugging Face Llama-format directory (config.json, safetensors, tokenizer.json):
    its weights start the LM, its tokenizer tokenizes the data, its vocabulary grows by the three
    image tokens (:mod:`mm1model.pretrained`). ``vit``: a Hugging Face CLIPVisionModel / CLIPModel
    directory for the image encoder. None = random init from ``TrainConfig.seed`` (the connector
    always starts random). The size keeps naming the shape, and must match each checkpoint's
    (a mismatch is a ConfigError naming the field). ``freeze_lm`` / ``freeze_vit``: keep that tower's
    checkpoint weights fixed (no gradient, not in the optimizer;
    :func:`mm1model.parametrization.freeze_towers`); only a tower with a checkpoint may be frozen.
    ``TrainConfig.init_from`` (a branch from a run's checkpoint) may be set too: the branch's
    weights are the trunk's, which must have started from the same ``init``."""

    lm: str | None = None
    vit: str | None = None
    freeze_lm: bool = False
    freeze_vit: bool = False

    def __post_init__(self) -> None:
        for key in ("lm", "vit"):
            value = getattr(self, key)
            if value is not None and not value.strip():
                raise ConfigError(f"init.{key} must be a checkpoint directory or null, got an empty string")
            if getattr(self, f"freeze_{key}") and value is None:
                # a frozen random tower would never train; and the sharded build's parametrization
                # init skips frozen parameters where the host build does not
                raise ConfigError(f"init.freeze_{key} needs init.{key}: freezing a tower keeps the checkpoint's "
                                  f"weights, and there is none (a frozen random {key} would never train)")

    @property
    def pretrained(self) -> bool:
        """Whether any tower starts from a checkpoint."""
        return self.lm is not None or self.vit is not None

    @property
    def towers(self) -> str:
        """Which towers start from checkpoints: ``none`` (all from scratch), ``lm``, ``vit`` or
        ``lm+vit``. A runs table's ``init`` column and a fit's ``init`` (the regime its LR
        sweeps trained in) record it; `scaling launch` compares it with the target's."""
        return "+".join(t for t in ("lm", "vit") if getattr(self, t) is not None) or "none"

    def origin(self) -> dict[str, str]:
        """Where each tower's weights come from, for records: a checkpoint path or ``random``."""
        return {"lm": self.lm or "random", "vit": self.vit or "random", "connector": "random"}


@dataclass
class TrainConfig:
    """One training run. Defaults are MM1's pre-training recipe (batch 512 x 4096, 200k steps).

    ``optimizer``: the peak LR, schedule and AdamW settings (:class:`OptimizerConfig`).
    ``model``: overrides of the size's :class:`~mm1model.model.MM1Config`, nested dicts
    (e.g. ``{"lm": {"n_layers": 1}}``). ``z_loss``: None = the size's own coefficient.
    ``batch_size``: global batch in sequences, fixed whatever the world size; each rank runs
    ``batch_size / world_size`` of it in micro-batches of ``micro_batch_size`` (None = no
    accumulation). With ``micro_batch_size`` set, the data each micro-batch sees does not depend
    on the world size, so a 2-process run follows the 1-process one. ``reduce_every_micro_batch``:
    under FSDP2, reduce-scatter gradients after every micro-batch (sharded gradients only); False
    saves reduce-scatters but holds unsharded fp32 gradients of the whole model between
    micro-batches (see :func:`mm1model.train.forward_backward`).
    ``seed``: model initialisation and torch RNG; the sample order is ``data.seed``.
    ``divergence_factor``: after warmup, a training loss above this times the first step's loss
    stops the run as diverged (a non-finite loss does at any step).
    ``eval_interval`` / ``checkpoint_interval``: in steps, 0 = only at the end / never.
    ``tensorboard``: write TensorBoard event files into ``run_dir/tensorboard`` (:mod:`mm1model.trackers`).
    ``async_checkpoint``: write interval checkpoints in the background (None = on GPU only; a
    preemption checkpoint is always written before the signal is handed on).
    ``peak_flops``: peak FLOP/s of one device for MFU; None = the datasheet value of the GPU
    (:data:`mm1model.paper.GPU_PEAK_FLOPS`), or no MFU on CPU. ``device``: "cpu", "cuda" or None
    (cuda when available).

    Horizons from one trunk (wsd): ``save_steps``: steps (1 <= s < ``steps``) whose checkpoints
    are kept whatever ``keep_checkpoints`` says, e.g. the :attr:`OptimizerConfig.cooldown_start`
    of each shorter horizon. It may change on resume (a step already passed is not saved then).
    ``init_from``: a checkpoint directory (``checkpoint.step_dir(trunk_run_dir, s)``) that a run
    with no readable checkpoint of its own starts from: tensors, data lanes, RNG and loop state
    (step, initial loss, best val loss, wall time), then its own config (steps, schedule, AdamW
    settings) from that step on. It is part of the run's identity. A wsd run to T branched at
    T's ``cooldown_start`` from a longer wsd run with the same settings reproduces a straight run
    to T bit for bit on CPU at a fixed thread count.
    ``init``: pretrained weights for the LM and the ViT, and per-tower freezing (:class:`InitConfig`).
    """

    size: str = "100K"
    model: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    z_loss: float | None = None
    batch_size: int = paper.BATCH_SIZE
    micro_batch_size: int | None = None
    reduce_every_micro_batch: bool = True
    steps: int = paper.STEPS
    eval_interval: int = 1000
    eval_sequences: int = 64
    eval_batch_size: int | None = None
    checkpoint_interval: int = 1000
    keep_checkpoints: int = 2
    async_checkpoint: bool | None = None
    log_interval: int = 10
    tensorboard: bool = True
    seed: int = 0
    threads: int | None = None
    divergence_factor: float = 1.5
    activation_checkpointing: bool = False
    compile: bool = False
    peak_flops: float | None = None
    device: str | None = None
    save_steps: tuple[int, ...] = ()
    init_from: str | None = None
    init: InitConfig = field(default_factory=InitConfig)
    run_dir: str = "runs/train"

    def __post_init__(self) -> None:
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
        if self.device not in (None, "cpu", "cuda"):
            raise ConfigError(f"device must be cpu, cuda or null, got {self.device!r}")
        outside = [s for s in self.save_steps if not 1 <= s < self.steps]
        if outside:
            raise ConfigError(f"save_steps must lie in [1, steps) = [1, {self.steps}) (the last step needs no "
                              f"checkpoint: the run ends there), got {', '.join(map(str, outside))}")
        if self.init_from is not None and not self.init_from.strip():
            raise ConfigError("init_from must be a checkpoint directory or null, got an empty string")


@dataclass
class TrainResult:
    """What ``result.json`` holds. Losses are mean cross-entropy in nats per text token.

    ``status``: ok | diverged | failed. ``final_val_loss``: at the last step (None unless ok).
    ``params``: N, LM non-embedding parameters. ``lr``: the peak LR. ``tokens``: sequence
    positions trained on (steps x batch_size x seq_len). ``wall_s``: training seconds summed
    over restarts.
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


# ------------------------------------------------------------------------------------ schedule
def _wsd_cooldown_start(decay_steps: int, cooldown_fraction: float) -> int:
    return decay_steps - round(cooldown_fraction * decay_steps)


def lr_multiplier(step: int, warmup_steps: int, decay_steps: int, min_lr_ratio: float = paper.MIN_LR_RATIO,
                  schedule: str = "cosine", cooldown_fraction: float = paper.WSD_COOLDOWN_FRACTION,
                  cooldown_shape: str = "linear") -> float:
    """Schedule multiplier s(t) of the peak LR for update ``step`` (0-based).

    Warmup (both schedules): ``s = (t + 1) / warmup_steps`` for t < warmup_steps, so the first
    update already moves and update ``warmup_steps - 1`` runs at the peak. ``min_lr_ratio`` from
    t = decay_steps on (counted from step 0, warmup included).

    ``cosine``: from 1 at t = warmup_steps to ``min_lr_ratio`` at t = decay_steps,
    ``m + (1 - m) (1 + cos(pi p)) / 2`` with ``p = (t - warmup_steps) / (decay_steps - warmup_steps)``.

    ``wsd`` (Hagele et al. 2024): 1 from warmup_steps to the cooldown start
    ``c = decay_steps - round(cooldown_fraction x decay_steps)``, then from 1 at t = c to ``m`` at
    t = decay_steps with ``p = (t - c) / (decay_steps - c)``: ``linear`` ``m + (1 - m)(1 - p)``,
    ``1-sqrt`` ``m + (1 - m)(1 - sqrt(p))`` (drops fast at first, then slowly).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= decay_steps:
        return min_lr_ratio
    if schedule == "cosine":
        progress = (step - warmup_steps) / (decay_steps - warmup_steps)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule != "wsd":
        raise ConfigError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    start = _wsd_cooldown_start(decay_steps, cooldown_fraction)
    if step < start:
        return 1.0
    progress = (step - start) / (decay_steps - start)  # decay_steps > step >= start: never 0 / 0
    if cooldown_shape == "linear":
        return min_lr_ratio + (1 - min_lr_ratio) * (1 - progress)
    if cooldown_shape == "1-sqrt":
        return min_lr_ratio + (1 - min_lr_ratio) * (1 - math.sqrt(progress))
    raise ConfigError(f"unknown cooldown_shape {cooldown_shape!r}; valid: {', '.join(COOLDOWN_SHAPES)}")


def decoupled_weight_decay(weight_decay: float | None, peak_lr: float) -> float:
    """lambda of a run: its ``weight_decay``, or MM1's 0.1 x peak LR where it is None (what
    :func:`resolve` fills in, and what a runs table reads back from an unresolved config)."""
    return weight_decay if weight_decay is not None else paper.WEIGHT_DECAY_RATIO * peak_lr


def torch_weight_decay(weight_decay: float, peak_lr: float) -> float:
    """The ``weight_decay`` to hand ``torch.optim.AdamW`` for decoupled decay ``lambda``.

    torch's AdamW multiplies each parameter by ``1 - lr_t x wd`` per step. With
    ``lr_t = peak_lr x s(t)`` and ``wd = lambda / peak_lr`` that is ``1 - lambda x s(t)``: the
    decay follows the schedule but not the peak LR, as in MM1 (AXLearn's decoupled AdamW).
    MM1's default lambda = 0.1 x peak_lr gives wd = 0.1.
    """
    return weight_decay / peak_lr


# ------------------------------------------------------------------------------------ resolving
def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


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


def pretrained_overrides(config: TrainConfig) -> dict[str, Any]:
    """The model fields ``config.init``'s checkpoints decide (nested like ``model``): the LM's grown
    vocabulary, tied head, rope theta, norm epsilon and image placeholder id; the ViT's activation
    and norm epsilon. ConfigError where ``model`` sets one of them to another value."""
    out: dict[str, Any] = {}
    if config.init.lm is not None:
        lm = read_llama(config.init.lm)
        out = {"lm": lm.lm_fields(), "image_id": lm.special.image}
    if config.init.vit is not None:
        out["vit"] = read_clip(config.init.vit).vit_fields()
    for tower, values in out.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            given = config.model.get(tower, {}).get(key, value)
            if given != value:
                raise ConfigError(f"model.{tower}.{key}={given!r} disagrees with init.{tower}'s {value!r}: "
                                  "the checkpoint decides it, leave it out")
    return out


def model_config(config: TrainConfig) -> MM1Config:
    """The :class:`MM1Config` a run trains: the size's, then ``model`` overrides, then z_loss,
    then what ``init``'s checkpoints decide (:func:`pretrained_overrides`; their shapes checked
    against the result), then the parametrization's forward multipliers
    (:func:`mm1model.parametrization.parametrize`)."""
    base = get_size(config.size)
    overrides = dict(config.model)
    if config.z_loss is not None:
        overrides = _merge(overrides, {"lm": {"z_loss": config.z_loss}})
    if config.init.pretrained:
        overrides = _merge(overrides, pretrained_overrides(config))
    if not overrides:
        return parametrize(base)
    init_fields = {f.name for f in dataclasses.fields(MM1Config) if f.init}
    merged = _merge({k: v for k, v in to_dict(base).items() if k in init_fields}, overrides)
    mcfg = from_dict(MM1Config, _strip_non_init(MM1Config, merged), where="model")
    if config.init.pretrained and mcfg.parametrization != "sp":
        raise ConfigError(f"init: a pretrained checkpoint is a standard-parametrization model; parametrization "
                          f"{mcfg.parametrization} would change what it computes")
    if config.init.lm is not None:
        check_lm_shape(mcfg.lm, read_llama(config.init.lm), size=config.size)
    if config.init.vit is not None:
        check_vit_shape(mcfg.vit, read_clip(config.init.vit), size=config.size)
    return parametrize(mcfg)


def resolve(config: TrainConfig) -> TrainConfig:
    """Fill the derived values: lambda (MM1's 0.1 x peak LR unless set) and the data's image
    geometry. Raises ConfigError for a missing peak LR, an unknown size or a bad model.

    ``data.image_size`` / ``data.image_tokens`` come from the model so the packer always makes
    the placeholders the connector fills; ``data.tokenizer`` from ``init.lm``, so a pretrained LM
    reads its own tokens.
    """
    mcfg = model_config(config)
    opt = config.optimizer
    if opt.lr is None:
        raise ConfigError("optimizer.lr (the peak LR) is not set: give it, or let `scaling sweep` / "
                          "`scaling launch` set it from a law (MM1's: mm1model.paper.mm1_peak_lr(N))")
    # with sub-image decomposition the ViT sees tiles of half the side: the input is twice as big
    image_size = mcfg.vit.image_size * (2 if mcfg.vit.sub_images else 1)
    for name, value, model_value in (("image_size", config.data.image_size, image_size),
                                     ("image_tokens", config.data.image_tokens, mcfg.tokens_per_image)):
        if value is not None and value != model_value:
            raise ConfigError(f"data.{name}={value} disagrees with the model's {model_value}; leave it null")
    if 0 < config.steps < opt.warmup_steps:
        # stated, not refused: a short test or smoke run may mean it
        warnings.warn(f"optimizer.warmup_steps {opt.warmup_steps} exceeds steps {config.steps}: the LR never passes "
                      f"{config.steps / opt.warmup_steps:.1%} of its peak {opt.lr:g} (MM1 warms up over 1% of its run)",
                      UserWarning, stacklevel=2)
    if config.data.tokenizer is not None and config.data.tokenizer != config.init.lm:
        raise ConfigError(f"data.tokenizer={config.data.tokenizer} disagrees with init.lm={config.init.lm}: the "
                          "tokenizer comes with the pretrained LM; leave it null")
    data = dataclasses.replace(config.data, image_size=image_size, image_tokens=mcfg.tokens_per_image,
                               tokenizer=config.init.lm)
    weight_decay = decoupled_weight_decay(opt.weight_decay, opt.lr)
    return dataclasses.replace(config, optimizer=dataclasses.replace(opt, weight_decay=weight_decay), data=data)


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
