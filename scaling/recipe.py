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

At the target's horizon and batch (issue "The recipe at the target's horizon and batch"): a law
with ln D and ln B terms is read at the recipe's own token budget and batch; a fit with a batch
law (ln B* on ln D, and ln N) sets the batch, and the steps follow from the budget; the weight
decay follows MM1's rule or holds AdamW's timescale fixed as a fraction of the run (see
../shared/notes/horizons.md). Every such value has origin "fit" and, where the fit has one, an
interval beside it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mm1model import paper
from mm1model.config import ConfigError
from mm1model.counting import param_counts
from mm1model.sizes import get_size, size_names
from mm1model.train_config import SCHEDULES, InitConfig, OptimizerConfig

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
    peak_lr_pi95: tuple[float, float] | None  # 95% prediction interval of the law (statsmodels), if it has one
    peak_lr_bootstrap95: tuple[float, float] | None  # 95% percentile interval over the fit's bootstrap refits
    min_lr_ratio: float
    min_lr: float
    warmup_steps: int
    decay_steps: int
    steps: int
    schedule: str
    weight_decay_ratio: float
    weight_decay: float  # decoupled lambda (not multiplied by the LR)
    weight_decay_rule: str  # "mm1" (0.1 x peak) or "timescale" (the sweep's 1/lambda as a fraction of the run)
    weight_decay_timescale: float | None  # 1 / (lambda x steps): AdamW's EMA timescale as a fraction of the run
    batch_size: int
    batch_size_pi95: tuple[float, float] | None  # the batch law's 95% interval, in sequences
    seq_len: int
    batch_tokens: int
    max_images: int
    image_tokens: int
    image_size: int
    grad_clip: float
    z_loss: float
    total_tokens: int
    origins: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # what the recipe chose not to take from the law, and why
    # where each tower's weights start: a checkpoint directory or "random" (InitConfig.origin)
    weights: dict[str, str] = field(default_factory=lambda: InitConfig().origin())

    def optimizer(self) -> OptimizerConfig:
        """The trainer's optimizer-and-schedule config of this recipe (what a launch trains with)."""
        return OptimizerConfig(lr=self.peak_lr, schedule=self.schedule, min_lr_ratio=self.min_lr_ratio,
                               warmup_steps=self.warmup_steps, decay_steps=self.decay_steps,
                               weight_decay=self.weight_decay, grad_clip=self.grad_clip)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (``origins`` included)."""
        out = dataclasses.asdict(self)
        for key in ("peak_lr_pi95", "peak_lr_bootstrap95", "batch_size_pi95"):
            out[key] = list(getattr(self, key)) if getattr(self, key) else None
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


WEIGHT_DECAY_RULES = ("mm1", "timescale")


def round_batch(sequences: float, multiple: int = 1) -> int:
    """The global batch (in sequences) nearest ``sequences`` in ln that is a positive multiple of
    ``multiple`` (the ranks x micro-batches it must divide over)."""
    if not (math.isfinite(sequences) and sequences > 0):
        raise ConfigError(f"the batch law predicts a batch of {sequences} sequences: not a positive number")
    if multiple < 1:
        raise ConfigError(f"batch multiple must be >= 1, got {multiple}")
    below = max(multiple, math.floor(sequences / multiple) * multiple)
    above = below + multiple
    return below if abs(math.log(sequences / below)) <= abs(math.log(above / sequences)) else above


def sweep_timescale(law: FitResult) -> float | None:
    """The AdamW weight-decay timescale of the sweep as a fraction of its runs (Wang & Aitchison
    2024): tau = 1 / (lambda T) at each cell's optimum, lambda = the sweep's decay ratio x lr*
    and T the cell's steps at its optimal batch (``steps_opt``, else ``steps``); the median over
    cells. None when the law has no such optima (MM1's) or the sweep's ratio is not one value."""
    ratio = law.weight_decay_ratio
    if not ratio:
        return None
    steps = [(o.get("lr_opt"), o.get("steps_opt") or o.get("steps")) for o in law.optima]
    fractions = [1.0 / (ratio * lr * t) for lr, t in steps if lr and t]
    return float(np.median(fractions)) if fractions else None


def recipe_for(size_or_params: str | float | int, law: FitResult | None = None,
               overrides: dict[str, Any] | None = None, *, tokens: float | None = None,
               weight_decay_rule: str = "mm1", batch_multiple: int = 1) -> Recipe:
    """The MM1 recipe for a target: a size name (``30B``) or a raw N (``3e10``).

    ``law`` gives the peak LR (None: MM1's law, ``scaling.law.mm1_law()``). Its
    ``n_convention`` decides how a size name is counted. ``overrides`` maps any of
    :data:`OVERRIDABLE` to a value (origin "user"); an unknown key is a ConfigError listing the
    valid ones.

    The target's horizon: the token budget D is ``tokens`` (origin "user"), else steps x batch x
    seq_len (MM1's 200k x 512 x 4096 unless overridden). When the law carries a batch law and the
    user fixed neither ``batch_size`` nor ``steps``, the batch is the batch law's at (D, N),
    rounded to a multiple of ``batch_multiple`` (:func:`round_batch`), and the steps are
    re-derived for the budget (origin "fit"). A law with ln D / ln B terms is then evaluated at
    the recipe's own tokens and batch. Warmup is MM1's 2000 steps (1% of a shorter run), the decay
    runs to the last step.

    ``weight_decay_rule``: "mm1" (lambda = 0.1 x peak LR per step) or "timescale" (lambda such
    that the EMA timescale 1/lambda is the same fraction of the run as in the sweep,
    :func:`sweep_timescale`; origin "fit").
    """
    if law is None:
        law = mm1_law()
    if weight_decay_rule not in WEIGHT_DECAY_RULES:
        raise ConfigError(f"unknown weight-decay rule {weight_decay_rule!r}; valid: {', '.join(WEIGHT_DECAY_RULES)}")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ConfigError(f"unknown recipe key(s) {', '.join(unknown)}; valid: {', '.join(OVERRIDABLE)}")
    if tokens is not None and not (math.isfinite(tokens) and tokens > 0):
        raise ConfigError(f"--tokens must be a positive token count, got {tokens}")
    if tokens is not None and "steps" in overrides and "batch_size" in overrides:
        raise ConfigError("give --tokens, or --steps and --batch-size, not all three: they fix the same budget")
    size, params = resolve_target(size_or_params, law.n_convention)
    law_origin = "paper" if law.source == "mm1" else "fit"
    origins: dict[str, str] = {}

    def pick(key: str, default: Any, origin: str) -> Any:
        if key in overrides:
            origins[key] = "user"
            return overrides[key]
        origins[key] = origin
        return default

    seq_len = int(pick("seq_len", paper.SEQ_LEN, "paper"))
    batch_size = int(pick("batch_size", paper.BATCH_SIZE, "paper"))
    steps = int(pick("steps", paper.STEPS, "paper"))
    budget = float(tokens) if tokens is not None else float(steps * batch_size * seq_len)
    budget_origin = "user" if tokens is not None or "user" in (origins["steps"], origins["batch_size"]) else "paper"
    batch_pi, notes = None, []
    # the batch law sets the batch only where the user fixed neither the batch nor the steps
    batch_law = law.batch_law if law.batch_law is not None and law.batch_law.coefficients else None
    if "batch_size" in overrides or "steps" in overrides:
        batch_law = None
    unresolved = _unresolved_exponent(batch_law) if batch_law is not None else None
    if unresolved:
        notes.append(f"batch: the batch law's D exponent, 95% CI [{unresolved[0]:+.2f}, {unresolved[1]:+.2f}], "
                     f"includes 0, so it cannot say how B grows to this budget; MM1's batch {batch_size} kept "
                     "(--batch-size chooses another)")
        batch_law = None
    if batch_law is not None:
        batch_size = round_batch(batch_law.predict(budget, params) / seq_len, batch_multiple)
        origins["batch_size"] = law_origin
        interval = batch_law.interval(budget, params)
        batch_pi = (interval[0] / seq_len, interval[1] / seq_len) if interval else None
    if tokens is not None or origins["batch_size"] == law_origin:
        if "steps" in overrides:  # tokens and steps fixed: the batch follows
            batch_size = round_batch(budget / (steps * seq_len), batch_multiple)
            origins["batch_size"] = "user"
        else:
            steps = max(1, math.ceil(budget / (batch_size * seq_len)))
            origins["steps"] = origins["batch_size"] if origins["batch_size"] != "paper" else budget_origin
    decay_steps = int(pick("decay_steps", steps, origins["steps"]))
    total_tokens = steps * batch_size * seq_len
    origins["batch_tokens"] = "user" if "user" in (origins["batch_size"], origins["seq_len"]) else origins["batch_size"]
    origins["total_tokens"] = budget_origin if tokens is not None else (
        "user" if "user" in (origins["steps"], origins["batch_tokens"]) else origins["steps"])

    at = dict(tokens=total_tokens if law.uses_tokens else None,
              batch=batch_size * seq_len if law.uses_batch else None)
    peak_lr = float(pick("peak_lr", law.predict(params, **at), law_origin))
    user_lr = origins["peak_lr"] == "user"
    pi = None if user_lr else law.prediction_interval(params, **at)
    boot = None if user_lr else law.bootstrap_interval(params, **at)
    origins["peak_lr_pi95"] = origins["peak_lr_bootstrap95"] = law_origin
    min_lr_ratio = float(pick("min_lr_ratio", paper.MIN_LR_RATIO, "paper"))
    derived_lr = "user" if "user" in (origins["peak_lr"], origins["min_lr_ratio"]) else origins["peak_lr"]
    min_lr = float(pick("min_lr", min_lr_ratio * peak_lr, derived_lr))
    if origins["min_lr"] == "user":  # an absolute floor given: the ratio the schedule runs follows from it
        min_lr_ratio = min_lr / peak_lr
    wd_ratio = float(pick("weight_decay_ratio", paper.WEIGHT_DECAY_RATIO, "paper"))
    timescale = None
    if weight_decay_rule == "timescale":
        timescale = sweep_timescale(law)
        if timescale is None:
            raise ConfigError("--weight-decay-rule timescale needs a fitted law whose sweep recorded its steps "
                              "and weight decay (MM1's law has none): use the mm1 rule")
        wd_default, wd_origin = 1.0 / (timescale * steps), law_origin
    else:
        derived_wd = "user" if "user" in (origins["peak_lr"], origins["weight_decay_ratio"]) else origins["peak_lr"]
        wd_default, wd_origin = wd_ratio * peak_lr, derived_wd
    weight_decay = float(pick("weight_decay", wd_default, wd_origin))
    z_default = default_z_loss(size, params, law.n_convention)

    recipe = Recipe(
        size=size, params=params, n_convention=law.n_convention,
        peak_lr=peak_lr, peak_lr_pi95=pi, peak_lr_bootstrap95=boot,
        min_lr_ratio=min_lr_ratio, min_lr=min_lr,
        warmup_steps=int(pick("warmup_steps", *_warmup(steps, origins["steps"]))),
        decay_steps=decay_steps, steps=steps,
        schedule=str(pick("schedule", law.schedule or paper.SCHEDULE, law_origin if law.schedule else "paper")),
        weight_decay_ratio=wd_ratio if timescale is None else weight_decay / peak_lr, weight_decay=weight_decay,
        weight_decay_rule=weight_decay_rule, weight_decay_timescale=1.0 / (weight_decay * steps) if weight_decay else None,
        batch_size=batch_size, batch_size_pi95=batch_pi, seq_len=seq_len, batch_tokens=batch_size * seq_len,
        max_images=int(pick("max_images", paper.MAX_IMAGES, "paper")),
        image_tokens=int(pick("image_tokens", paper.IMAGE_TOKENS, "paper")),
        image_size=int(pick("image_size", paper.IMAGE_SIZE, "paper")),
        grad_clip=float(pick("grad_clip", paper.GRAD_CLIP, "paper")),
        z_loss=float(pick("z_loss", z_default, "paper")),
        total_tokens=total_tokens, origins=origins, notes=tuple(notes),
    )
    _validate(recipe)
    return recipe


def _unresolved_exponent(batch_law: Any) -> tuple[float, float] | None:
    """The batch law's 95% CI of its ln D exponent when that CI includes 0 (statsmodels', else the
    bootstrap's), else None: a law whose exponent may be zero is no guide to a budget decades
    beyond the sweep's, and extrapolating its intercept alone would set the batch of the sweep."""
    ci = (batch_law.ci95 or {}).get("ln_tokens") or (batch_law.bootstrap_ci95 or {}).get("ln_tokens")
    if ci and ci[0] is not None and ci[0] <= 0 <= ci[1]:
        return float(ci[0]), float(ci[1])
    return None


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
