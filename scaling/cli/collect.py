"""`scaling collect`: a thin shell over :func:`scaling.sweep.run_collect`."""
from __future__ import annotations

import click

from scaling.sweep import run_collect


@click.command("collect")
@click.argument("sweep_dir", type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), help="runs.csv or runs.parquet (default: print CSV).")
def collect_command(sweep_dir, out) -> None:
    """The runs table of a sweep, the input of `scaling fit`."""
    click.echo(run_collect(sweep_dir, out).summary())
