"""`scaling compare`: the fitted law against muP / CompleteP transfer on the same sweeps."""
from __future__ import annotations

import click

from scaling.compare import SELECTS, run_compare


@click.command("compare")
@click.argument("sweep_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Write compare.json, lr_star.png and regret.png here (default: print only).")
@click.option("--select", type=click.Choice(SELECTS), default="parabola", show_default=True,
              help="lr* of a size: the parabola's vertex through the best grid point and its neighbours, "
                   "or the best grid point.")
def compare_command(sweep_dirs: tuple[str, ...], out: str | None, select: str) -> None:
    """Per parametrization: slope of ln lr* vs ln width / ln depth, hold-out predictions of the
    largest size (fitted law vs base LR reused) with regret, and the asymptotic penalty."""
    click.echo(run_compare(list(sweep_dirs), out, select=select).summary())
