"""The MM1 pre-training recipe for a target size, every value tagged with where it came from.

Paper values (McKinzie et al. 2024, Appendix B "Pre-training" and Sec. "Final Model and
Training Recipe"; the numbers live in :mod:`mm1model.paper`): cosine decay to 10% of the peak
over 2e5 steps after a 2000-step linear warmup; AdamW with decoupled weight decay; gradient
clipping at max norm 1; batch 512 sequences of 4096 tokens with up to 16 images of 144 tokens
each at 378x378; z-loss for MM1-30B (the size table's entry says so). Weight decay 0.1 x peak LR
is from summaries of the paper ("secondary" in ../shared/notes/mm1-and-peers.md), so it is a
default a user can override like any other.

The recipe's optimizer settings reach the trainer as one typed value, :meth:`Recipe.optimizer`
(a :class:`mm1model.train_config.OptimizerConfig`), passed through unchanged by ``scaling launch``.

The peak LR comes from a law (:class:`scaling.fit.FitResult`): origin "fit" for a law fitted by
``scaling fit``, "paper" for MM1's own law (``scaling.law.mm1_law``). A value set through
``overrides`` has origin "user". Values derived from others (min LR, weight decay, decay steps,
token counts) follow the origin of what they were derived from unless overridden themselves.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from mm1model import paper
from mm1model.config import ConfigError
from mm1model.counting import param_counts
from mm1model.sizes import get_size, size_names
from mm1model.train_config import SCHEDULES, OptimizerConfig

from scaling.law import FitResult, mm1_law

ORIGINS = ("fit", "paper", "user")


@dataclass(frozen=True)
class Recipe:
    """Training settings for one target model. LRs are per step of AdamW, steps are optimizer
    steps, ``batch_size`` is in sequences (global), token counts are sequence positions."""

    size: str | None  # the size name, or None for a raw parameter count
    params: float  # N under n_convention
    n_convention: str
    peak_lr: float
    peak_lr_pi95: tuple[float, float] | None  # 95% prediction interval of the law, if it has one
    min_lr_ratio: float
    min_lr: float
    warmup_steps: int
    decay_steps: int
    steps: int
    schedule: str
    weight_decay_ratio: float
    weight_decay: float  # decoupled lambda (not multiplied by the LR)
    batch_size: int
    seq_len: int
    batch_tokens: int
    max_images: int
    image_tokens: int
    image_size: int
    grad_clip: float
    z_loss: float
    total_tokens: int
    origins: dict[str, str] = field(default_factory=dict)

    def optimizer(self) -> OptimizerConfig:
        """The trainer's optimizer-and-schedule config of this recipe (what a launch trains with)."""
        return OptimizerConfig(lr=self.peak_lr, schedule=self.schedule, min_lr_ratio=self.min_lr_ratio,
                               warmup_steps=self.warmup_steps, decay_steps=self.decay_steps,
                               weight_decay=self.weight_decay, grad_clip=self.grad_clip)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (``origins`` included)."""
        out = dataclasses.asdict(self)
        out["peak_lr_pi95"] = list(self.peak_lr_pi95) if self.peak_lr_pi95 else None
        return out


# Keys a user may set; the rest are identity (size, params) or derived bookkeeping.
OVERRIDABLE = ("peak_lr", "min_lr_ratio", "min_lr", "warmup_steps", "decay_steps", "steps",
               "schedule", "weight_decay_ratio", "weight_decay", "batch_size", "seq_len",
               "max_images", "image_tokens", "image_size", "grad_clip", "z_loss")


def resolve_target(target: str | float | int, n_convention: str = "non_embedding") -> tuple[str | None, float]:
    """(size name or None, N) for a size name such as ``30B`` or a raw count such as ``3e9``.

    A name is looked up in ``mm1model.sizes`` and counted with ``mm1model.counting``
    (non_embedding -> ``params``, total -> ``params_lm_total``); a raw number is taken as N in
    the given convention.
    """
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        value = float(target)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"target N must be positive, got {target}")
        return None, value
    text = str(target).strip()
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None:
        return resolve_target(value, n_convention)
    return text, float(_count(param_counts(get_size(text)), n_convention))


def _count(counts: Any, n_convention: str) -> float:
    if n_convention == "non_embedding":
        return counts.params
    if n_convention == "total":
        return counts.params_lm_total
    raise ConfigError(f"unknown n_convention {n_convention!r}; valid: non_embedding, total")


def default_z_loss(size: str | None, params: float, n_convention: str = "non_embedding") -> float:
    """The z-loss of a target: its size-table entry's (MM1's 1e-4 at 30B, else 0); a raw N takes
    the entry of the named size nearest to it in ln N."""
    if size is None:
        size = min(size_names(), key=lambda name: abs(math.log(resolve_target(name, n_convention)[1] / params)))
    return get_size(size).lm.z_loss


def recipe_for(size_or_params: str | float | int, law: FitResult | None = None,
               overrides: dict[str, Any] | None = None) -> Recipe:
    """The MM1 recipe for a target: a size name (``30B``) or a raw N (``3e10``).

    ``law`` gives the peak LR (None: MM1's law, ``scaling.law.mm1_law()``). Its
    ``n_convention`` decides how a size name is counted. A law with a ln_tokens term is
    evaluated at the recipe's total tokens (steps x batch_size x seq_len). ``overrides`` maps
    any of :data:`OVERRIDABLE` to a value (origin "user"); an unknown key is a ConfigError
    listing the valid ones.
    """
    if law is None:
        law = mm1_law()
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ConfigError(f"unknown recipe key(s) {', '.join(unknown)}; valid: {', '.join(OVERRIDABLE)}")
    size, params = resolve_target(size_or_params, law.n_convention)
    law_origin = "paper" if law.source == "mm1" else "fit"
    origins: dict[str, str] = {}

    def pick(key: str, default: Any, origin: str) -> Any:
        if key in overrides and overrides[key] is not None:
            origins[key] = "user"
            return overrides[key]
        origins[key] = origin
        return default

    steps = int(pick("steps", paper.STEPS, "paper"))
    decay_steps = int(pick("decay_steps", steps, origins["steps"]))
    batch_size = int(pick("batch_size", paper.BATCH_SIZE, "paper"))
    seq_len = int(pick("seq_len", paper.SEQ_LEN, "paper"))
    total_tokens = steps * batch_size * seq_len
    origins["batch_tokens"] = "user" if "user" in (origins["batch_size"], origins["seq_len"]) else "paper"
    origins["total_tokens"] = "user" if "user" in (origins["steps"], origins["batch_tokens"]) else "paper"

    predicted = law.predict(params, total_tokens if law.uses_tokens else None)
    peak_lr = float(pick("peak_lr", predicted, law_origin))
    pi = law.prediction_interval(params, total_tokens if law.uses_tokens else None)
    origins["peak_lr_pi95"] = law_origin
    min_lr_ratio = float(pick("min_lr_ratio", paper.MIN_LR_RATIO, "paper"))
    derived_lr = "user" if "user" in (origins["peak_lr"], origins["min_lr_ratio"]) else origins["peak_lr"]
    min_lr = float(pick("min_lr", min_lr_ratio * peak_lr, derived_lr))
    if origins["min_lr"] == "user":  # an absolute floor given: the ratio the schedule runs follows from it
        min_lr_ratio = min_lr / peak_lr
    wd_ratio = float(pick("weight_decay_ratio", paper.WEIGHT_DECAY_RATIO, "paper"))
    derived_wd = "user" if "user" in (origins["peak_lr"], origins["weight_decay_ratio"]) else origins["peak_lr"]
    weight_decay = float(pick("weight_decay", wd_ratio * peak_lr, derived_wd))
    z_default = default_z_loss(size, params, law.n_convention)

    recipe = Recipe(
        size=size, params=params, n_convention=law.n_convention,
        peak_lr=peak_lr, peak_lr_pi95=pi if origins["peak_lr"] != "user" else None,
        min_lr_ratio=min_lr_ratio, min_lr=min_lr,
        warmup_steps=int(pick("warmup_steps", *_warmup(steps, origins["steps"]))),
        decay_steps=decay_steps, steps=steps,
        schedule=str(pick("schedule", paper.SCHEDULE, "paper")),
        weight_decay_ratio=wd_ratio, weight_decay=weight_decay,
        batch_size=batch_size, seq_len=seq_len, batch_tokens=batch_size * seq_len,
        max_images=int(pick("max_images", paper.MAX_IMAGES, "paper")),
        image_tokens=int(pick("image_tokens", paper.IMAGE_TOKENS, "paper")),
        image_size=int(pick("image_size", paper.IMAGE_SIZE, "paper")),
        grad_clip=float(pick("grad_clip", paper.GRAD_CLIP, "paper")),
        z_loss=float(pick("z_loss", z_default, "paper")),
        total_tokens=total_tokens, origins=origins,
    )
    _validate(recipe)
    return recipe


def _warmup(steps: int, steps_origin: str) -> tuple[int, str]:
    """The paper's 2000 warmup steps; a run shorter than that keeps the paper's ratio
    (2000 / 200k = 1%) instead, so ``steps`` alone can shorten a run."""
    if steps > paper.WARMUP_STEPS:
        return paper.WARMUP_STEPS, "paper"
    return steps * paper.WARMUP_STEPS // paper.STEPS, steps_origin


def _validate(r: Recipe) -> None:
    for key in ("peak_lr", "batch_size", "seq_len", "steps", "decay_steps", "image_size"):
        value = getattr(r, key)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"recipe {key} must be positive, got {value}")
    for key in ("min_lr", "weight_decay", "warmup_steps", "max_images", "image_tokens", "grad_clip", "z_loss",
                "min_lr_ratio", "weight_decay_ratio"):
        value = getattr(r, key)
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"recipe {key} must be non-negative, got {value}")
    if r.min_lr > r.peak_lr:
        raise ConfigError(f"recipe min_lr {r.min_lr:g} exceeds peak_lr {r.peak_lr:g}")
    if r.warmup_steps > r.steps:
        raise ConfigError(f"recipe warmup_steps {r.warmup_steps} exceeds steps {r.steps}")
    if r.schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {r.schedule!r}; valid: {', '.join(SCHEDULES)}")
