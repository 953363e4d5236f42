"""`scaling status`: a thin shell over :func:`scaling.sweep.run_status`."""
from __future__ import annotations

import click

from scaling.sweep import run_status


@click.command("status")
@click.argument("sweep_dir", type=click.Path())
def status_command(sweep_dir) -> None:
    """Per size: cells done / running / failed / diverged and the best LR so far; for a
    `scaling launch` directory, its job and training progress."""
    click.echo(run_status(sweep_dir).summary())
