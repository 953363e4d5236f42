"""`scaling fit`: fit the peak-LR law to sweep results and tabulate it for target sizes."""
from __future__ import annotations

import math

import click

from scaling.cli import main
from scaling.fit import DEFAULT_TARGETS, run_fit


@main.command("fit")
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option("--select", default="parabola", show_default=True,
              help="Optimum per size: parabola | argmin | within:FRAC (e.g. within:0.0025).")
@click.option("--features", default="params", show_default=True,
              help="Regressors of ln lr*: params (ln N) or params,tokens (ln N, ln D).")
@click.option("--weighted", is_flag=True, help="WLS weighted by the optima's bootstrap variances.")
@click.option("--bootstrap", default=200, show_default=True, type=int,
              help="Resamples per size for the optimum's 95% interval (0: none).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the bootstrap.")
@click.option("--targets", default=",".join(DEFAULT_TARGETS), show_default=True,
              help="Sizes to predict: size names or raw N (e.g. 3B,7B,3e10).")
@click.option("--reference", type=click.Choice(["mm1"]), default=None,
              help="Show MM1's law beside the fit; alone (no inputs), tabulate MM1's law.")
@click.option("--n-convention", default="non_embedding", show_default=True,
              type=click.Choice(["non_embedding", "total"]), help="What N counts in the LM.")
@click.option("--out", default=None, type=click.Path(),
              help="Output directory [default: SWEEP_DIR/fit for one sweep directory, else ./fit].")
def fit_command(inputs, select, features, weighted, bootstrap, seed, targets, reference, n_convention, out):
    """Fit ln(lr*) = a ln N + b (MM1's form) to sweep directories or runs tables (CSV, Parquet,
    JSONL with columns params, lr, loss[, size, tokens, batch_size, seed, status])."""
    from pathlib import Path

    if out is None:
        out = Path(inputs[0]) / "fit" if len(inputs) == 1 and Path(inputs[0]).is_dir() else Path("fit")
    law, ref, files = run_fit(list(inputs), out, select=select, features=features, weighted=weighted,
                              bootstrap=bootstrap, seed=seed, targets=targets, reference=reference,
                              n_convention=n_convention)
    click.echo(_summary(law, ref, Path(out), files))


def _summary(law, ref, out, files) -> str:
    lines = [("MM1 law (paper): " if law.source == "mm1" else "fit: ") + law.formula()]
    if law.source == "fit":
        lines.append(f"  {law.n_groups} sizes, select={law.select}, features={','.join(law.features)}, "
                     f"N={law.n_convention}, {'WLS' if law.weighted else 'OLS'}"
                     + (f", R^2={law.r2:.4f}" if law.r2 is not None else ""))
        bt = law.backtest
        if bt.get("rows"):
            lines.append(f"  leave-one-size-out: mean |error| {bt['mean_abs_error_log_lr']:.3f} in ln lr, "
                         f"worst ratio x{bt['max_ratio']:.2f}")
        if ref is not None:
            lines.append("MM1 law (paper): " + ref.formula())
    for note in law.warnings:
        lines.append(f"  warning: {note}")
    lines.append("")
    lines.append("| target | N | peak LR | 95% PI" + (" | MM1 LR" if ref is not None else "") + " |")
    lines.append("|---|---|---|---|" + ("---|" if ref is not None else ""))
    for t in law.targets:
        pi = t.get("peak_lr_pi95")
        cells = [t["name"], f"{t['params']:.3g}", f"{t['peak_lr']:.2e}",
                 f"[{pi[0]:.2e}, {pi[1]:.2e}]" if pi and all(map(math.isfinite, pi)) else "-"]
        if ref is not None:
            cells.append(f"{t['reference_lr']:.2e}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"full recipe table: {out / 'lr_table.md'} (also .csv, .json)")
    lines.append("wrote: " + ", ".join(f.name for f in files) + f" in {out}")
    return "\n".join(lines)
