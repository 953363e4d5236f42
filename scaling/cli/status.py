"""`scaling status`: a thin shell over :func:`scaling.sweep.run_status` and, with ``--watch``,
:func:`scaling.sweep.watch_status`."""
from __future__ import annotations

import click

from mm1model.config import ConfigError
from scaling.adaptive import stop_lines
from scaling.sweep import run_status, watch_status


@click.command("status")
@click.argument("sweep_dir", type=click.Path())
@click.option("--watch", type=float, default=None, is_flag=False, flag_value=10.0, metavar="[SECONDS]",
              help="Refresh every SECONDS (default 10) with an ETA until the sweep is done (Ctrl-C stops).")
@click.option("--watch-count", type=int, default=None, hidden=True, help="Stop --watch after this many refreshes.")
def status_command(sweep_dir, watch, watch_count) -> None:
    """Per size: cells done / running / failed / diverged and the best LR so far, why each failed
    cell failed and the disk the sweep takes; for a `scaling launch` directory, its job and
    training progress; for an adaptive sweep, why each size stopped."""
    if watch is None:
        click.echo("\n".join([run_status(sweep_dir).summary()] + stop_lines(sweep_dir)))
        return
    if watch <= 0:
        raise ConfigError(f"--watch takes a number of seconds > 0, got {watch:g}")

    def echo(text: str) -> None:  # each refresh with why each size stopped so far (an adaptive sweep)
        click.echo("\n".join([text] + stop_lines(sweep_dir)) + "\n")

    try:
        watch_status(sweep_dir, watch, echo=echo, count=watch_count)
    except KeyboardInterrupt:
        pass
