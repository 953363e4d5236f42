"""Parametrizations: how init, forward multipliers and per-layer AdamW settings depend on size.

Three rules, chosen by ``MM1Config.parametrization``:

* ``sp``: standard parametrization, what the trainer always did. One LR for every parameter,
  decay on matrices only.
* ``mup``: maximal update parametrization for Adam (Yang et al. 2022, "Tensor Programs V";
  microsoft/mup), relative to a base size of the same depth: the optimum LR found at the base
  width is meant to hold at every width.
* ``completep``: muP plus depth transfer (Dey et al. 2025, "Don't be lazy: CompleteP",
  2505.01618): every residual branch is scaled by (L / L_base)^-alpha; alpha = 1 is CompleteP,
  alpha = 0.5 is Depth-muP (Yang et al. 2023, 2310.02244).

With m = d_model / base d_model (width multiplier), m_L = n_layers / base n_layers (depth
multiplier), sigma = ``lm.init_std`` and eta, lambda, eps the peak LR, the torch weight decay and
Adam's epsilon handed to :func:`param_groups`, the parameter types (by the dims that grow with
width) and their rules:

* hidden, both dims grow (LM block matrices, the connector's d x d layer): init sigma/sqrt(m)
  (query 0; residual output projections GPT-2's sigma/sqrt(2 L), with L_base under
  completep), LR eta/m, weight decay lambda m, eps/m (the gradients of a hidden matrix shrink
  like 1/m, so a fixed eps would swallow a growing share of the update: Everett et al.
  2407.05872; CompleteP's rule, used by both); inside an LM block under completep, LR
  eta m_L^(alpha-1)/m and eps/(m m_L^alpha).
* input, only fan-out grows (token embedding, the connector's projection into the LM): init
  sigma, LR eta, decay as SP (none on embeddings), eps unchanged.
* readout, only fan-in grows (an untied LM head): init 0, LR eta, decay lambda.
* vector, a 1-D parameter that grows (RMSNorm gains): init 1, LR eta, no decay; inside an LM
  block under completep, LR eta m_L^(alpha-1) and eps m_L^-alpha.
* fixed, nothing grows (ViT, C-Abstractor convolutions): SP.

Forward multipliers (set on ``LMConfig`` by :func:`forward_multipliers`): readout input x 1/m;
attention scale sqrt(base head_dim)/head_dim (so 1/d_head scaling that equals SP's
1/sqrt(d_head) at the base); residual branches x m_L^-alpha (completep only); the LM's input
x ``INPUT_MULT`` = 10 at every size (see there why).

Which dims "grow" is read by comparing each parameter's shape in the base size with the base
at twice the width, as ``mup.set_base_shapes`` compares shapes, so the rules never depend on
parameter names beyond the query, the residual output projections and the LM blocks. The
hidden weight decay x m keeps lr x wd per group equal to SP's ("independent" decay, the note's
``decoupled_wd``), so the decay per step stays lambda x schedule(t) at every width. Tied embeddings are the input layer
(LR eta, init sigma); the readout multiplier then does the output's scaling and the head is not
zero-initialised (mup's MuSharedReadout).

Multimodal caveat (MM1 keeps a pretrained ViT): the image encoder and the connector's
convolutions do not grow with the LM, so they keep SP rules; the connector's projection into
the LM is an input layer, its d x d layer a hidden one.

The LR schedule must scale each group relatively: ``lr_t = schedule(t) x peak x lr_mult``
(:func:`set_group_lrs`); each group carries ``lr_mult`` and it survives ``state_dict`` /
``load_state_dict`` of the optimizer (torch keeps extra group keys), so a resumed run keeps it.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mm1model import paper
from mm1model.config import ConfigError, replace
from mm1model.model import MM1, Draw, LMConfig, MM1Config, fill_in_place
from mm1model.sizes import get_size

PARAMETRIZATIONS = ("sp", "mup", "completep")

# The input multiplier of mup / completep: the LM's input (token embeddings, image tokens) x 10,
# Cerebras-GPT's tuned muP value (mm1model.paper.MUP_INPUT_MULT), the same at every size, so it
# does not break width transfer. Why not 1: the depth limit behind CompleteP assumes the
# embedding stream is of the same order as the sum of the blocks' contributions; with
# sigma = 0.02 embeddings (coordinates ~0.017) and branch outputs ~0.07, one block at the base
# depth overwrites the stream while eight blocks at 1/4 each do not, and the depth coordinate
# check over d2/d4/d8 fails (max |slope| 0.31 at 1; 0.11 at 10, lr 1e-2, 8 seeds).
INPUT_MULT = paper.MUP_INPUT_MULT
KINDS = ("hidden", "input", "readout", "vector", "fixed")

# Wrappers that parallelize.py may put around a block insert these into parameter names.
_WRAPPER_PARTS = re.compile(r"(_checkpoint_wrapped_module|_orig_mod|_fsdp_wrapped_module)\.")
_BLOCK_INDEX = re.compile(r"^(lm\.blocks)\.\d+\.")
_RESIDUAL_OUT = ("attention.wo.weight", "feed_forward.w2.weight")


@dataclass(frozen=True)
class ParamRule:
    """One parameter's treatment: its type (see the module table), whether it sits in an LM
    block, SP's decay split, and the multipliers on the peak LR, torch weight decay and Adam eps.
    ``init_std`` is the std to re-draw it with (0.0 = zeros), None = keep SP's init."""

    kind: str
    in_block: bool
    decay: bool
    lr_mult: float
    wd_mult: float
    eps_mult: float
    init_std: float | None


def unwrapped_name(name: str) -> str:
    """A parameter's name without the wrappers parallelize.py may add (activation checkpointing,
    compile): the name on the unwrapped MM1."""
    return _WRAPPER_PARTS.sub("", name)


def _canonical(name: str) -> str:
    return _BLOCK_INDEX.sub(r"\1.0.", unwrapped_name(name))


def freeze_towers(model: nn.Module, lm: bool = False, vit: bool = False) -> nn.Module:
    """Freeze the LM (embeddings, blocks, final norm, head) and / or the ViT of ``model``:
    ``requires_grad`` False, so :func:`param_rules` (hence :func:`param_groups`, the optimizer's
    groups, and :func:`init_parametrized`) leave those parameters out, and they get no gradient.
    MM1 trains both towers (all unfrozen); freezing the ViT is what LLaVA-style recipes do. Call
    it before :func:`mm1model.parallelize.parallelize`. Returns the model."""
    for tower, frozen in ((model.lm, lm), (model.vit, vit)):
        if frozen:
            tower.requires_grad_(False)
    return model


def base_config(config: MM1Config) -> MM1Config:
    """The base size of a mup / completep config, checked: same vocabulary, image encoder,
    connector and head layout, and not larger than ``config`` in width or depth."""
    if config.base_size is None:
        raise ConfigError(f"parametrization {config.parametrization} needs base_size "
                          "(the size whose optimum LR is reused)")
    base = get_size(config.base_size)
    lm, blm = config.lm, base.lm
    if blm.d_model > lm.d_model or blm.n_layers > lm.n_layers:
        raise ConfigError(f"base size {config.base_size} (d_model {blm.d_model}, {blm.n_layers} layers) is larger "
                          f"than the target {config.name} (d_model {lm.d_model}, {lm.n_layers} layers)")
    same = (blm.vocab_size == lm.vocab_size and blm.tie_embeddings == lm.tie_embeddings
            and base.vit == config.vit and base.connector == config.connector)
    if not same:
        raise ConfigError(f"base size {config.base_size} differs from {config.name} in more than width and depth "
                          "(vocabulary, tied head, image encoder or connector); pick a base of the same family")
    return base


def multipliers(config: MM1Config) -> tuple[float, float]:
    """(m, m_L): width and depth multipliers of ``config`` over its base (1, 1 for sp)."""
    if config.parametrization == "sp":
        return 1.0, 1.0
    base = base_config(config)
    return config.lm.d_model / base.lm.d_model, config.lm.n_layers / base.lm.n_layers


def forward_multipliers(config: MM1Config) -> dict[str, float]:
    """The LMConfig fields a parametrization sets: ``attn_scale``, ``readout_mult``,
    ``residual_mult``, ``input_mult`` (see the module table). Validates the parametrization, base and alpha."""
    if config.parametrization not in PARAMETRIZATIONS:
        raise ConfigError(f"unknown parametrization '{config.parametrization}'; "
                          f"valid: {', '.join(PARAMETRIZATIONS)}")
    if not (isinstance(config.alpha, (int, float)) and 0.0 <= config.alpha <= 1.0):
        raise ConfigError(f"alpha must be in [0, 1] (1 CompleteP, 0.5 Depth-muP), got {config.alpha!r}")
    if config.parametrization == "sp":
        return {}
    base = base_config(config)
    m, m_depth = multipliers(config)
    alpha = config.alpha if config.parametrization == "completep" else 0.0
    return {"attn_scale": math.sqrt(base.lm.head_dim) / config.lm.head_dim,
            "readout_mult": 1.0 / m,
            "residual_mult": m_depth ** -alpha,
            "input_mult": INPUT_MULT}


def parametrize(config: MM1Config) -> MM1Config:
    """``config`` with the LM's forward multipliers set by its parametrization (a new config; an
    sp config is returned as is). Idempotent, so a config read back from config.json passes
    through unchanged. Validates the parametrization, its base and alpha; a multiplier set by
    hand to another value than the rule's is a ConfigError."""
    rule = forward_multipliers(config)
    defaults = LMConfig.__dataclass_fields__
    for key, value in rule.items():
        current = getattr(config.lm, key)
        if current != defaults[key].default and not math.isclose(current, value, rel_tol=1e-12):
            raise ConfigError(f"lm.{key}={current} conflicts with parametrization "
                              f"{config.parametrization} (which sets {value:.6g}); leave it unset")
    if not rule:
        return config
    # A new LMConfig: the size table's instance is shared and must stay untouched.
    return dataclasses.replace(config, lm=dataclasses.replace(config.lm, **rule))


@functools.lru_cache(maxsize=32)
def _kinds(base_size: str) -> dict[str, str]:
    """Parameter type by canonical name, read off the shapes of the base size against the base
    at twice the width (both built on the meta device), so the types do not depend on how far
    a given target is from its base (a depth-only target has m = 1 and still needs them)."""
    base = get_size(base_size)
    wide = replace(base, lm={"d_model": 2 * base.lm.d_model, "ffn_dim": 2 * base.lm.ffn_dim})
    with torch.device("meta"):
        small, large = MM1(base), MM1(wide)
    embeddings = {id(p) for mod in small.modules() if isinstance(mod, nn.Embedding) for p in mod.parameters(False)}
    large_shapes = {_canonical(name): tuple(p.shape) for name, p in large.named_parameters()}
    kinds = {}
    for name, param in small.named_parameters():
        grows = [a != b for a, b in zip(param.shape, large_shapes[_canonical(name)])]
        if not any(grows):
            kind = "fixed"
        elif param.ndim < 2:
            kind = "vector"
        elif id(param) in embeddings:
            kind = "input"  # (vocab, d): the rows are fixed inputs, the width is the output
        elif grows[0] and grows[1]:
            kind = "hidden"
        else:
            kind = "input" if grows[0] else "readout"
        kinds[_canonical(name)] = kind
    return kinds


def param_rules(model: nn.Module, config: MM1Config | None = None) -> dict[str, ParamRule]:
    """The rule of every trainable parameter of ``model`` (an MM1, possibly wrapped by
    parallelize.py), by parameter name; a tied weight appears once, under its first name."""
    config = config or model.config
    embeddings = {id(p) for mod in model.modules() if isinstance(mod, nn.Embedding) for p in mod.parameters(False)}
    sp = config.parametrization == "sp"
    if not sp:
        m, m_depth = multipliers(config)
        kinds = _kinds(config.base_size)
        base_layers = base_config(config).lm.n_layers
    completep = config.parametrization == "completep"
    alpha = config.alpha
    sigma = config.lm.init_std
    rules: dict[str, ParamRule] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        canonical = _canonical(name)
        # SP's split, exactly as the trainer always made it.
        decay = not (param.ndim < 2 or id(param) in embeddings or "embed" in name.split(".")[-1])
        in_block = canonical.startswith("lm.blocks.")
        if sp:
            rules[name] = ParamRule("fixed", in_block, decay, 1.0, 1.0, 1.0, None)
            continue
        if canonical not in kinds:
            raise ConfigError(f"parameter {name} has no counterpart in base size {config.base_size}")
        kind = kinds[canonical]
        depth_lr = m_depth ** (alpha - 1.0) if completep and in_block else 1.0
        depth_eps = m_depth ** -alpha if completep and in_block else 1.0
        lr_mult, wd_mult, eps_mult, init_std = 1.0, 1.0, 1.0, None
        if kind == "hidden":
            lr_mult, wd_mult, eps_mult = depth_lr / m, m, depth_eps / m
            std = sigma
            if canonical.endswith(_RESIDUAL_OUT) and in_block:
                # GPT-2's 1/sqrt(2L) residual init; CompleteP moves the depth part into the branch
                # multiplier, so it keeps the base depth's value.
                layers = base_layers if completep else config.lm.n_layers
                std = sigma / math.sqrt(2 * layers)
            init_std = 0.0 if canonical.endswith("attention.wq.weight") else std / math.sqrt(m)
        elif kind == "vector":
            lr_mult, eps_mult = depth_lr, depth_eps
        elif kind == "readout":
            init_std = 0.0
        rules[name] = ParamRule(kind, in_block, decay, lr_mult, wd_mult, eps_mult, init_std)
    return rules


@torch.no_grad()
def init_parametrized(model: nn.Module, draw: Draw = fill_in_place) -> nn.Module:
    """Re-draw the parameters whose init ``model.config.parametrization`` changes (after SP's
    init, from the current torch RNG): hidden matrices N(0, std/sqrt(m)), the query and an
    untied head zero. Applied to a built model from outside, like :mod:`mm1model.parallelize`;
    a no-op under sp. ``draw`` as in :meth:`MM1.init_weights` (the sharded init passes its
    own). Returns the model."""
    params = dict(model.named_parameters())
    for name, rule in param_rules(model).items():
        if rule.init_std is None:
            continue
        if rule.init_std == 0.0:
            draw(params[name], nn.init.zeros_)
        else:
            draw(params[name], functools.partial(nn.init.normal_, std=rule.init_std))
    return model


def param_groups(model: nn.Module, config: MM1Config | None, lr: float, weight_decay: float,
                 eps: float) -> list[dict[str, Any]]:
    """AdamW parameter groups for ``model`` under ``config.parametrization`` (default: the
    model's own config).

    ``lr``: the peak LR; ``weight_decay``: torch's coefficient for decayed matrices (see
    ``mm1model.train.torch_weight_decay``); ``eps``: Adam's epsilon. Each group holds ``params``,
    ``name``, ``lr_mult``, ``lr`` (= lr x lr_mult), ``weight_decay`` and ``eps``. Under sp these are
    exactly the trainer's two groups, ``decay`` then ``no_decay``, with ``lr_mult`` 1.
    """
    params = dict(model.named_parameters())
    grouped: dict[tuple, dict[str, Any]] = {}
    for name, rule in param_rules(model, config).items():
        key = (rule.decay, rule.lr_mult, rule.wd_mult if rule.decay else 0.0, rule.eps_mult)
        if key not in grouped:
            grouped[key] = {"params": [], "kinds": [], "decay": rule.decay, "lr_mult": rule.lr_mult,
                            "weight_decay": weight_decay * rule.wd_mult if rule.decay else 0.0,
                            "eps": eps * rule.eps_mult}
        grouped[key]["params"].append(params[name])
        if rule.kind not in grouped[key]["kinds"]:
            grouped[key]["kinds"].append(rule.kind)
    groups = []
    for g in sorted(grouped.values(), key=lambda g: not g["decay"]):  # stable: decay groups first
        split = "decay" if g["decay"] else "no_decay"
        neutral = g["lr_mult"] == 1.0 and g["eps"] == eps and g["weight_decay"] in (weight_decay, 0.0)
        name = split if neutral else (f"{'+'.join(g['kinds'])}/{split}/lr_x{g['lr_mult']:.4g}"
                                      f"/eps_x{g['eps'] / eps:.4g}")
        groups.append({"params": g["params"], "name": name, "lr_mult": g["lr_mult"], "lr": lr * g["lr_mult"],
                       "weight_decay": g["weight_decay"], "eps": g["eps"]})
    return groups


def set_group_lrs(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's LR to ``lr x group['lr_mult']`` (``lr`` = schedule(t) x peak): the
    schedule scales each group relatively and never overwrites the parametrization's factors."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
