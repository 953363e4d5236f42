"""Figures of a fit, one function per figure, each saved as PNG and SVG.

Plot functions only draw what a :class:`scaling.law.FitResult` already holds (optima, their
bootstrap intervals, the loss curves, coefficients and their covariance, targets); they never
fit or predict a target. :mod:`scaling.report` decides which figures a fit gets and where.
:func:`write_figure` is how every figure of the project reaches disk: atomically.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mm1model import records
from mm1model.paper import MM1_SWEEP_PARAMS, MM1_SWEEP_SIZES
from scaling.law import FitResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (files only). Imported on first use: it
    takes a third of a second, and most commands draw nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_figure(fig: Figure, path: str | Path, **savefig) -> Path:
    """Write ``fig`` to ``path`` atomically, in the format its suffix names; ``savefig``: more
    keywords of matplotlib's ``savefig`` (dpi, bbox_inches). The figure stays open."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", **savefig)
    records.write_bytes(path, buffer.getvalue())
    return path


def save_figure(fig: Figure, stem: str | Path) -> list[Path]:
    """Write ``stem``.png (150 dpi) and ``stem``.svg atomically, then close ``fig``; returns both paths."""
    paths = [write_figure(fig, f"{stem}.png", bbox_inches="tight", dpi=150),
             write_figure(fig, f"{stem}.svg", bbox_inches="tight")]
    pyplot().close(fig)
    return paths


def _colors(n: int):
    return pyplot().cm.viridis(np.linspace(0.0, 0.85, max(n, 1)))


def _loss(point: dict) -> float:
    """A point's loss; a diverged one is +inf in memory and null in a loaded fit.json."""
    return math.inf if point["loss"] is None else point["loss"]


def _batch_key(point: dict) -> tuple:
    """Which batch a point was run at (a loaded fit.json of an older fit has no batch fields)."""
    return point.get("batch_tokens"), point.get("batch_size")


def loss_vs_lr(result: FitResult, stem: str | Path) -> list[Path]:
    """Final validation loss against peak LR, one curve per size (seed means; where the batch
    was swept, the best batch's curve, the other batches' faint), diverged runs as crosses on
    the top edge, the chosen optimum as a star with its bootstrap 95% interval."""
    fig, ax = pyplot().subplots(figsize=(7.5, 4.8))
    finite = [_loss(p) for o in result.optima for p in o["points"] if math.isfinite(_loss(p))]
    top = max(finite) + 0.08 * (max(finite) - min(finite) + 1e-9)
    for opt, color in zip(result.optima, _colors(len(result.optima))):
        points = opt["points"]
        best = _batch_key(points[opt["best_point"]]) if "best_point" in opt else None
        for batch in dict.fromkeys(_batch_key(p) for p in points):
            curve = [p for p in points if _batch_key(p) == batch]
            lr = np.array([p["lr"] for p in curve])
            loss = np.array([_loss(p) for p in curve])
            ok = np.isfinite(loss)
            if best is None or batch == best:
                swept = best is not None and len({_batch_key(p) for p in points}) > 1
                label = f"{opt['size']} (N={opt['params']:.3g}" + (f", best batch {batch[0] or batch[1]:.3g})" if swept else ")")
                ax.plot(lr[ok], loss[ok], "o-", color=color, ms=4, lw=1.3, label=label)
            else:
                ax.plot(lr[ok], loss[ok], "-", color=color, lw=0.8, alpha=0.35)
            if (~ok).any():
                ax.plot(lr[~ok], np.full((~ok).sum(), top), "x", color=color, ms=7, mew=2, clip_on=False)
        if opt["select"] == "within":
            if "selected_points" in opt:
                chosen = [points[i] for i in opt["selected_points"]]
            else:  # a fit.json written before the rows named their points
                rows = {round(v, 9) for v in opt["log_lr_selected"]}
                chosen = [p for p in points if round(math.log(p["lr"]), 9) in rows]
            ax.plot([p["lr"] for p in chosen], [p["loss"] for p in chosen], "o", ms=9, mfc="none", mec=color, mew=1.5)
        y_opt = opt["loss_best"]
        xerr = None
        if opt.get("lr_ci95"):
            lo, hi = opt["lr_ci95"]
            xerr = [[max(opt["lr_opt"] - lo, 0)], [max(hi - opt["lr_opt"], 0)]]
        ax.errorbar([opt["lr_opt"]], [y_opt], xerr=xerr, fmt="*", color=color, ms=13, mec="black",
                    mew=0.6, capsize=4, elinewidth=1.2, zorder=5)
    ax.set_xscale("log")
    ax.set_ylim(top=top + 0.02 * (top - min(finite) + 1e-9))
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("final validation loss")
    star = "star = mean ln lr of the rows" if result.select.startswith("within") else "star = optimum"
    if result.bootstrap:
        star += f", bar = bootstrap 95% (B={result.bootstrap})"
    title = f"LR sweeps, selection {result.select} ({star})"
    ax.set_title(title, fontsize=10)
    if result.optima and result.optima[0]["select"] == "within":
        ax.plot([], [], "o", ms=9, mfc="none", mec="gray", mew=1.5, label=f"{result.select} (rows in the fit)")
    if any(not math.isfinite(_loss(p)) for o in result.optima for p in o["points"]):
        ax.plot([], [], "x", color="gray", mew=2, label="diverged")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(True, which="both", alpha=0.25)
    return save_figure(fig, stem)


def lr_law(result: FitResult, stem: str | Path, reference: FitResult | None = None) -> list[Path]:
    """ln N against ln lr* on log-log axes: the groups' optima with their intervals, the fitted
    line with its 95% confidence band, the targets with 95% prediction intervals, and the
    reference law (MM1's) for comparison."""
    from matplotlib.ticker import NullFormatter  # matplotlib loads on first use (see pyplot)

    fig, ax = pyplot().subplots(figsize=(7.5, 4.8))
    ns = [o["params"] for o in result.optima] + [t["params"] for t in result.targets]
    if result.source == "mm1":  # no data: span the paper's own sweep sizes too
        ns += list(MM1_SWEEP_PARAMS)
    n_lo, n_hi = min(ns) / 2, max(ns) * 2
    grid = np.geomspace(n_lo, n_hi, 200)
    tokens = result.targets[0].get("tokens") if result.targets else None
    if result.uses_tokens and tokens is None:
        tokens = float(np.median([o["tokens"] for o in result.optima]))
    batch = result.targets[0].get("batch_tokens") if result.targets else None
    if result.uses_batch and batch is None:
        batch = float(np.exp(np.median([o["log_batch_opt"] for o in result.optima])))
    label = "MM1 law (paper)" if result.source == "mm1" else "fit"
    line = np.array([result.predict(n, tokens, batch) for n in grid])
    ax.plot(grid, line, "-", color="C0", lw=2, label=f"{label}: {result.formula()}")
    band = [result.confidence_interval(n, tokens, batch) for n in grid]
    if band[0] is not None:
        ax.fill_between(grid, [b[0] for b in band], [b[1] for b in band], color="C0", alpha=0.18,
                        label="95% confidence band")
    if result.source == "mm1":
        ax.plot(MM1_SWEEP_PARAMS, [result.predict(n) for n in MM1_SWEEP_PARAMS], "s", color="C0", ms=5,
                label=f"MM1's sweep sizes ({MM1_SWEEP_SIZES[0]}-{MM1_SWEEP_SIZES[-1]})")
    elif reference is not None:
        ax.plot(grid, [reference.predict(n) for n in grid], "--", color="C3", lw=1.5,
                label=f"MM1 law: {reference.formula()}")
    if result.optima:
        x = np.array([o["params"] for o in result.optima])
        # Laws with a D (B) term: each optimum is moved to the line's D (B) along the fitted
        # term (a partial-residual view), so points and line share one D and B.
        move = np.array([math.exp(result.coefficients["ln_tokens"] * (math.log(tokens) - math.log(o["tokens"]))
                                  if result.uses_tokens else 0.0)
                         * math.exp(result.coefficients["ln_batch"] * (math.log(batch) - o["log_batch_opt"])
                                    if result.uses_batch else 0.0) for o in result.optima])
        y = np.array([o["lr_opt"] for o in result.optima]) * move
        yerr = None
        if all(o.get("lr_ci95") for o in result.optima):
            yerr = np.array([[max(o["lr_opt"] - o["lr_ci95"][0], 0), max(o["lr_ci95"][1] - o["lr_opt"], 0)]
                             for o in result.optima]).T * move
        moved = ([f"D = {tokens:.3g}"] if result.uses_tokens else []) + ([f"B = {batch:.3g}"] if result.uses_batch else [])
        label = "per-size optimum" + (f" (moved to {', '.join(moved)} by the fitted terms)" if moved else "")
        ax.errorbar(x, y, yerr=yerr, fmt="o", color="black", ms=5, capsize=3, label=label, zorder=5)
        named = set()
        for o, y_o in zip(result.optima, y):
            name = o["size"].split(" D=")[0]
            if name not in named:
                named.add(name)
                ax.annotate(name, (o["params"], y_o), textcoords="offset points", xytext=(5, 5), fontsize=8)
    for t in result.targets:
        yerr = None
        if t.get("peak_lr_pi95"):
            lo, hi = t["peak_lr_pi95"]
            yerr = [[t["peak_lr"] - lo], [hi - t["peak_lr"]]]
        ax.errorbar([t["params"]], [t["peak_lr"]], yerr=yerr, fmt="D", color="C1", ms=6, capsize=4,
                    mec="black", mew=0.5, zorder=6)
        # Label under the interval's lower end: targets sit close together, their bars do not.
        bottom = t["peak_lr_pi95"][0] if t.get("peak_lr_pi95") else t["peak_lr"]
        ax.annotate(f"{t['name']}\n{t['peak_lr']:.1e}", (t["params"], bottom), textcoords="offset points",
                    xytext=(0, -6), ha="center", va="top", fontsize=7.5, color="C1")
    if result.targets:
        ax.plot([], [], "D", color="C1", mec="black", mew=0.5,
                label="targets (bar = 95% prediction interval)" if result.cov else "targets")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):  # minor-tick labels collide on short log ranges
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlim(n_lo, n_hi)
    low, high = ax.get_ylim()
    ax.set_ylim(low / 3, high)  # room for the target labels under their intervals
    ax.set_xlabel(f"N (LM parameters, {result.n_convention.replace('_', '-')})")
    ax.set_ylabel("optimal peak learning rate")
    where = (f" at D = {tokens:.3g} tokens" if result.uses_tokens else "") + (
        f", B = {batch:.3g} tokens/step" if result.uses_batch else "")
    groups = "groups (N, D)" if result.uses_tokens else "sizes"
    ax.set_title(f"Peak-LR law{where}" + (f" ({result.n_groups} {groups}, {result.select})" if result.select else ""),
                 fontsize=10)
    ax.legend(fontsize=7.5, frameon=False, loc="lower left")
    ax.grid(True, which="major", alpha=0.3)
    return save_figure(fig, stem)
