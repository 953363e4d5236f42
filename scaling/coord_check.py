"""The coordinate check: does every module's activation scale stay put as the model grows?

For each size of a width family (or a depth family) and each seed, build the model under a
parametrization, run ``steps`` AdamW steps at one LR on the same real corpus batches, and record
the mean |output| of every module at the forward of each step (step 1 is at init). A
parametrization that transfers keeps each of these flat against width (depth): the log-log
slope of mean |activation| (averaged over seeds) against width per (module, step) stays near 0.
The threshold 0.13 is microsoft/mup's own test (ratio within 1.2 over a 4x width range;
``mm1model.paper.COORD_CHECK_THRESHOLD``). SP fails it: after one Adam step the logits and
hidden pre-activations grow like the width. The slope is :func:`scaling.fit.fit_line`'s, the
least-squares line every part of the project fits.

Modules are named as in the model, except the LM's blocks under a depth family, which are
named by relative depth, because CompleteP's claim is about coordinates at equal relative depth
(block 2 of 4 and block 4 of 8 read the same point of the residual stream; block 2 of 4 and
block 2 of 8 do not): the modules inside block i of L are ``lm.blocks@i/L.<module>`` (the
relative depth of the block's input, in lowest terms: ``lm.blocks@0.attention``,
``lm.blocks@1/2.feed_forward``) and the block's output is the residual stream at (i+1)/L,
``lm.stream@(i+1)/L`` (``lm.stream@1`` is the last block's output). Only the names present at
every depth are compared. A module whose output is exactly 0 at some size (the
zero-initialised query and head at step 1) has no slope at that step and is listed as such.

:func:`coord_check` returns a :class:`CoordCheckResult`; :func:`run_coord_check` (the command)
also writes coord_check.json and coord_check.png.
"""
from __future__ import annotations

import dataclasses
import math
import re
from fractions import Fraction
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mm1model import records
from mm1model.config import ConfigError, replace
from mm1model.data import DataConfig, PackedStream
from mm1model.data.images import normalise_images
from mm1model.model import MM1, MM1Config
from mm1model.paper import ADAM_BETAS, ADAM_EPS, COORD_CHECK_THRESHOLD
from mm1model.parametrization import PARAMETRIZATIONS, init_parametrized, param_groups, parametrize, set_group_lrs
from mm1model.sizes import get_size
from scaling.fit import fit_line
from scaling.plots import pyplot, write_figure


@dataclass
class CoordCheckConfig:
    """``sizes``: two or more sizes that differ in width only or depth only (e.g. w32,...,w256
    or d2,d4,d8). ``base_size``: None = the smallest of ``sizes``. ``lr``: the peak AdamW LR of
    every step (no schedule). ``corpus``: a prepared corpus (None = the default one);
    ``synthetic`` uses uniform random tokens instead (no images). ``fresh_batches``: a new batch
    at each step instead of one batch repeated (see :func:`coord_check` for why one is the
    default, and for the choice of ``lr`` and ``seeds``)."""

    sizes: tuple[str, ...]
    parametrization: str = "mup"
    base_size: str | None = None
    alpha: float = 1.0
    steps: int = 3
    seeds: int = 16
    lr: float = 3e-3
    batch_size: int = 1
    seq_len: int = 32
    threshold: float = COORD_CHECK_THRESHOLD
    corpus: str | None = None
    fresh_batches: bool = False

    def __post_init__(self) -> None:
        self.sizes = tuple(self.sizes)
        if len(self.sizes) < 2:
            raise ConfigError(f"the coordinate check needs at least 2 sizes, got {len(self.sizes)}")
        if self.parametrization not in PARAMETRIZATIONS:
            raise ConfigError(f"unknown parametrization '{self.parametrization}'; valid: {', '.join(PARAMETRIZATIONS)}")
        for key in ("steps", "seeds", "batch_size"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ConfigError(f"{key} must be a positive integer, got {getattr(self, key)!r}")
        if not (self.lr > 0 and self.threshold > 0):
            raise ConfigError(f"lr and threshold must be > 0, got {self.lr} and {self.threshold}")


@dataclass
class CoordCheckResult:
    """``axis``: ``width`` (x = d_model) or ``depth`` (x = n_layers). ``l1[module][step]``: mean
    |activation| per size (in ``sizes`` order), averaged over seeds. ``slopes[module][step]``:
    d ln(l1) / d ln(x) by least squares, None where some size gave exactly 0. ``passed``: every
    |slope| <= threshold."""

    config: CoordCheckConfig
    axis: str
    x: list[int]
    l1: dict[str, list[list[float]]]
    slopes: dict[str, list[float | None]]
    max_slope: float
    worst: tuple[str, int]
    passed: bool
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)
    files: list[Path] = field(default_factory=list)  # what run_coord_check wrote; not in the record

    def summary(self) -> str:
        """A few lines: verdict, worst module, and the steepest modules at the last step."""
        c = self.config
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [f"coordinate check {verdict}: {c.parametrization} over {self.axis} "
                 f"{', '.join(map(str, self.x))} ({', '.join(c.sizes)}), {c.steps} steps, {c.seeds} seeds, "
                 f"lr {c.lr:g}",
                 f"max |slope| {self.max_slope:.3f} (threshold {c.threshold}) at {self.worst[0]}, step {self.worst[1]}"]
        last = sorted(((abs(s[-1]), m, s[-1]) for m, s in self.slopes.items() if s[-1] is not None), reverse=True)
        lines.append(f"steepest at step {c.steps}: " + ", ".join(f"{m} {s:+.2f}" for _, m, s in last[:5]))
        if not self.passed and c.parametrization == "sp":
            lines.append("sp is expected to fail: its activations grow with the model, so its optimum LR moves")
        if self.files:
            lines.append(f"wrote {' and '.join(map(str, self.files))}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"config": dataclasses.asdict(self.config), "axis": self.axis, "x": self.x, "l1": self.l1,
                "slopes": self.slopes, "max_slope": self.max_slope, "worst": list(self.worst),
                "passed": self.passed, "records": self.records}


def _axis(configs: list[MM1Config]) -> tuple[str, list[int]]:
    widths = [c.lm.d_model for c in configs]
    depths = [c.lm.n_layers for c in configs]
    if len(set(depths)) == 1 and len(set(widths)) == len(widths):
        return "width", widths
    if len(set(widths)) == 1 and len(set(depths)) == len(depths):
        return "depth", depths
    raise ConfigError("the sizes must differ in width only (same depth) or depth only (same width), got "
                      + ", ".join(f"{c.name} (d_model {c.lm.d_model}, {c.lm.n_layers} layers)" for c in configs))


def _batches(config: CoordCheckConfig, model_config: MM1Config) -> list[dict[str, Any]]:
    n = config.steps if config.fresh_batches else 1
    if config.corpus == "synthetic":
        g = torch.Generator().manual_seed(0)
        out = []
        for _ in range(n):
            ids = torch.randint(5, model_config.lm.vocab_size, (config.batch_size, config.seq_len + 1), generator=g)
            out.append({"input_ids": ids[:, :-1], "labels": ids[:, 1:], "images": []})
    else:
        data = DataConfig(corpus=config.corpus, seq_len=config.seq_len, image_size=model_config.vit.image_size,
                          image_tokens=model_config.tokens_per_image, seed=0)
        stream = PackedStream(data)
        out = [stream.next_batch(config.batch_size) for _ in range(n)]
        out = [{**b, "images": normalise_images(b["images"])} for b in out]  # the model takes floats
    return out * (config.steps // n)


def _module_keys(name: str, n_layers: int, axis: str) -> list[str]:
    """The names a module's output is recorded under (see the module docstring)."""
    block = re.match(r"^lm\.blocks\.(\d+)(?=\.|$)", name)
    if axis != "depth" or block is None:
        return [name or "model"]
    index = int(block.group(1))
    if block.end() == len(name):  # the block's output: the residual stream after it
        return [f"lm.stream@{Fraction(index + 1, n_layers)}"]
    return [f"lm.blocks@{Fraction(index, n_layers)}" + name[block.end():]]


def _activations(model: MM1, axis: str, batches: list[dict[str, Any]], lr: float) -> list[dict[str, float]]:
    """Mean |output| per module at the forward of each step, then one AdamW step."""
    current: dict[str, list[float]] = {}

    def hook(name):
        def record(module, args, output):
            if isinstance(output, torch.Tensor) and output.is_floating_point():
                current.setdefault(name, []).append(output.detach().abs().mean().item())
        return record

    handles = [module.register_forward_hook(hook(key))
               for name, module in model.named_modules() if name
               for key in _module_keys(name, model.config.lm.n_layers, axis)]
    optimizer = torch.optim.AdamW(param_groups(model, None, lr, 0.0, ADAM_EPS), lr=lr, betas=ADAM_BETAS)
    set_group_lrs(optimizer, lr)
    steps = []
    try:
        for batch in batches:
            current.clear()
            optimizer.zero_grad(set_to_none=True)
            # return_logits: the head runs as a module, so its output (the logits) is recorded
            out = model(batch["input_ids"], batch["images"], batch["labels"], doc_ids=batch.get("doc_ids"),
                        position_ids=batch.get("position_ids"), return_logits=True)
            out.loss.backward()
            optimizer.step()
            steps.append({k: float(np.mean(v)) for k, v in current.items()})
    finally:
        for handle in handles:
            handle.remove()
    return steps


def _seeded(config: MM1Config, seed: int) -> MM1:
    torch.manual_seed(seed)
    return init_parametrized(MM1(config))  # SP's init, then the parametrization's, as the trainer does


@torch.no_grad()
def _share_encoder(model: MM1, reference: MM1) -> None:
    """Give ``model`` the reference's image-encoder and connector weights wherever the shapes
    agree (all but the connector's LM-side layers). The init draws the ViT's position
    embeddings after the LM, so without this every size of one seed would hold another random
    encoder, and its init noise would pose as a slope (MM1 shares one pretrained ViT anyway)."""
    ref = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        if name.startswith(("vit.", "connector.")) and name in ref and ref[name].shape == param.shape:
            param.copy_(ref[name])


def coord_check(config: CoordCheckConfig) -> CoordCheckResult:
    """Run the coordinate check (see the module docstring). Raises ConfigError for sizes that
    are not one family or a base larger than a size.

    Why one short batch (1 x 32 tokens) repeated, by default: a zero-initialised matrix (the
    query, the head) after its first Adam update is W = -lr sign(sum_t g(t) x(t)^T) over the N
    positions of the batch, and W x' is coherent (grows like the width) only where x' is one of
    those positions; the rest is a sum of random signs that grows like sqrt(width). muP's
    scaling holds once width >> N, so at CPU widths (32-256) N must be small, and the same
    batch keeps x' among the positions. Measured on this corpus, mup over w32..w256: max |slope|
    0.07 with 1 x 32 tokens, 0.18-0.23 with 4 x 64 (the first update of the query and head).

    Why lr 3e-3 and 16 seeds: 3e-3 is the middle (in log) of the transfer grids' Adam LRs, and the
    verdicts do not hinge on it (sp fails by 0.5 over depth and 1.7-2.4 over width from 1e-3 to
    1e-2). At 1e-2 completep's interior attention outputs (``lm.blocks@1/2.attention``) drift by
    -0.16 over d2..d8 and -0.13 over d2..d16: a finite-depth effect (d2 is far from the depth
    limit) that shrinks with the LR (-0.07 at 3e-3). The slope of a module averaged over seeds
    still carries seed noise of ~0.05 at 16 seeds (0.12 at 8, 0.18 at 4, same module), so fewer
    seeds than 16 can fail a transferring parametrization by chance."""
    base = config.base_size
    plain = [get_size(s) for s in config.sizes]
    axis, x = _axis(plain)
    order = np.argsort(x)
    base = base or config.sizes[int(order[0])]
    models = [parametrize(replace(p, parametrization=config.parametrization, base_size=base, alpha=config.alpha))
              for p in plain]
    batches = _batches(config, models[0])
    activation_rows, per_size = [], []
    reference = [_seeded(models[int(order[0])], seed) for seed in range(config.seeds)]
    for size, mcfg in zip(config.sizes, models):
        per_seed = []
        for seed in range(config.seeds):
            model = _seeded(mcfg, seed)
            _share_encoder(model, reference[seed])
            steps = _activations(model, axis, batches, config.lr)
            per_seed.append(steps)
            activation_rows += [{"size": size, "seed": seed, "step": t + 1, "module": m, "l1": v}
                                for t, row in enumerate(steps) for m, v in row.items()]
        per_size.append(per_seed)
    common = set.intersection(*(set(per_seed[0][0]) for per_seed in per_size))
    modules = [m for m in per_size[0][0][0] if m in common]  # forward order of the first size
    log_x = np.log(np.asarray(x, dtype=float))
    l1, slopes = {}, {}
    worst, max_slope = ("", 0), 0.0
    for m in modules:
        l1[m], slopes[m] = [], []
        for t in range(config.steps):
            means = [float(np.mean([seed_steps[t][m] for seed_steps in per_seed])) for per_seed in per_size]
            l1[m].append(means)
            if min(means) <= 0.0 or not all(math.isfinite(v) for v in means):
                slopes[m].append(None)
                continue
            slope = fit_line(log_x, np.log(means)).slope
            slopes[m].append(slope)
            if abs(slope) > max_slope:
                max_slope, worst = abs(slope), (m, t + 1)
    return CoordCheckResult(config=config, axis=axis, x=[int(v) for v in x], l1=l1, slopes=slopes,
                            max_slope=max_slope, worst=worst, passed=max_slope <= config.threshold,
                            records=activation_rows)


def plot_coord_check(result: CoordCheckResult, path: str | Path) -> None:
    """One panel per step: mean |activation| against width (depth), log-log, one line per
    module; the modules steeper than the threshold are drawn in colour and labelled."""
    plt = pyplot()
    steps = result.config.steps
    fig, axes = plt.subplots(1, steps, figsize=(4.2 * steps, 3.8), squeeze=False, sharey=True)
    for t, ax in enumerate(axes[0]):
        steep = sorted((abs(s[t]), m) for m, s in result.slopes.items()
                       if s[t] is not None and abs(s[t]) > result.config.threshold)
        labelled = {m for _, m in steep[-6:]}  # the six steepest get a colour and a legend entry
        for m, per_step in result.l1.items():
            values = per_step[t]
            if min(values) <= 0:
                continue
            slope = result.slopes[m][t]
            mark = m in labelled
            ax.plot(result.x, values, marker="o", lw=1.2 if mark else 0.6, alpha=1.0 if mark else 0.35,
                    color=None if mark else "grey", label=f"{m} ({slope:+.2f})" if mark else None)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("d_model" if result.axis == "width" else "n_layers")
        ax.set_title(f"step {t + 1}")
        if any(line.get_label()[:1] != "_" for line in ax.get_lines()):
            ax.legend(fontsize=6, loc="best")
    axes[0][0].set_ylabel("mean |activation|")
    verdict = "passed" if result.passed else "failed"
    fig.suptitle(f"coordinate check, {result.config.parametrization}: {verdict} "
                 f"(max |slope| {result.max_slope:.2f}, threshold {result.config.threshold}; "
                 "grey: within it or not the six steepest)", fontsize=9)
    fig.tight_layout()
    write_figure(fig, path, dpi=120)
    plt.close(fig)


def run_coord_check(config: CoordCheckConfig, out: str | Path | None = None) -> CoordCheckResult:
    """Everything ``scaling coord-check`` does: :func:`coord_check`, then (with ``out``)
    coord_check.json and coord_check.png written there; the result's ``files`` lists them."""
    result = coord_check(config)
    if out is None:
        return result
    out = Path(out)
    records.write_json(out / "coord_check.json", result.to_json())
    plot_coord_check(result, out / "coord_check.png")
    return dataclasses.replace(result, files=[out / "coord_check.json", out / "coord_check.png"])
