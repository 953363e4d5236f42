"""`scaling summary`: the closing lines of `make demo`."""
from __future__ import annotations

import click

from scaling.summary import summarize


@click.command("summary")
@click.argument("sweep_dir", type=click.Path())
@click.option("--fit", "fit_dir", type=click.Path(), default=None,
              help="The `scaling fit` output directory [default: SWEEP_DIR/fit].")
def summary_command(sweep_dir, fit_dir):
    """The fitted law beside MM1's, the backtest, the LR table and where every file is."""
    click.echo(summarize(sweep_dir, fit_dir).summary())
