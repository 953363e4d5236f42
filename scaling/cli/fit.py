"""`scaling fit`: fit the peak-LR law to sweep results and tabulate it for target sizes."""
from __future__ import annotations

import click

from mm1model.paper import STEP_LAW_WITHIN
from scaling.law import BATCH_FEATURES, FEATURES, N_CONVENTIONS, REFERENCES
from scaling.recipe import WEIGHT_DECAY_RULES
from scaling.report import DEFAULT_TARGETS, run_fit


@click.command("fit")
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option("--select", default="parabola", show_default=True,
              help=f"Optimum per size: parabola | argmin | within:FRAC (e.g. within:{STEP_LAW_WITHIN:g}).")
@click.option("--features", default="params", show_default=True,
              help=f"Regressors of ln lr*: {' | '.join(FEATURES)} (ln N, ln D, ln B; B in tokens per step).")
@click.option("--weighted", is_flag=True, help="WLS weighted by the optima's bootstrap variances.")
@click.option("--batch-features", default="tokens", show_default=True, type=click.Choice(BATCH_FEATURES),
              help="Regressors of ln B* where the batch was swept: ln D (Step Law's form), or ln D and ln N.")
@click.option("--bootstrap", default=1000, show_default=True, type=int,
              help="Bootstrap draws: each resamples the runs within every cell, reselects the optima and "
                   "refits the law (its percentile intervals, each optimum's 95% interval; 0: none).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the bootstrap.")
@click.option("--targets", default=",".join(DEFAULT_TARGETS), show_default=True,
              help="Sizes to predict: size names or raw N (e.g. 3B,7B,3e10).")
@click.option("--reference", type=click.Choice(REFERENCES), default=None,
              help="Show MM1's law beside the fit; alone (no inputs), tabulate MM1's law.")
@click.option("--n-convention", default="non_embedding", show_default=True,
              type=click.Choice(N_CONVENTIONS), help="What N counts in the LM.")
@click.option("--tokens", type=float, help="The targets' token budget D [MM1's 200k x 512 x 4096 = 4.19e11].")
@click.option("--weight-decay-rule", type=click.Choice(WEIGHT_DECAY_RULES), default="mm1", show_default=True,
              help="mm1: lambda = 0.1 x peak LR; timescale: 1/lambda the same fraction of the run as in the sweep.")
@click.option("--out", default=None, type=click.Path(),
              help="Output directory [default: SWEEP_DIR/fit for one sweep directory, else ./fit].")
def fit_command(inputs, select, features, batch_features, weighted, bootstrap, seed, targets, reference,
                n_convention, tokens, weight_decay_rule, out):
    """Fit ln(lr*) = a ln N + b (MM1's form) to sweep directories or runs tables (CSV, Parquet,
    JSONL with columns params, lr, loss[, size, tokens, batch_size, seed, status])."""
    report = run_fit(list(inputs), out, select=select, features=features, weighted=weighted,
                     bootstrap=bootstrap, seed=seed, targets=targets, reference=reference,
                     n_convention=n_convention, tokens=tokens, weight_decay_rule=weight_decay_rule,
                     batch_features=batch_features)
    click.echo(report.summary())
