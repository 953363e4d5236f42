"""`scaling collect`: a thin shell over :func:`scaling.sweep.run_collect`."""
from __future__ import annotations

import click

from scaling.sweep import run_collect


@click.command("collect")
@click.argument("sweep_dir", type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), help="runs.csv or runs.parquet (default: print CSV).")
def collect_command(sweep_dir, out) -> None:
    """The runs table of a sweep, the input of `scaling fit`."""
    result = run_collect(sweep_dir, out)
    for line in result.warnings:  # on stderr: the table on stdout stays a clean CSV
        click.echo(f"warning: {line}", err=True)
    click.echo(result.summary())
