"""`scaling compare`: the fitted law against muP / CompleteP transfer on the same sweeps."""
from __future__ import annotations

from pathlib import Path

import click

from mm1model import records
from scaling.cli import main
from scaling.compare import compare, plot_lr_star, plot_regret


@main.command("compare")
@click.argument("sweep_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Write compare.json, lr_star.png and regret.png here (default: print only).")
@click.option("--select", type=click.Choice(["parabola", "argmin"]), default="parabola", show_default=True,
              help="lr* of a size: the parabola's vertex through the best grid point and its neighbours, "
                   "or the best grid point.")
def compare_command(sweep_dirs: tuple[str, ...], out: str | None, select: str) -> None:
    """Per parametrization: slope of ln lr* vs ln width / ln depth, hold-out predictions of the
    largest size (fitted law vs base LR reused) with regret, and the asymptotic penalty."""
    result = compare(list(sweep_dirs), select=select)
    click.echo(result.table())
    if out:
        out_dir = Path(out)
        records.write_json(out_dir / "compare.json", result.to_json())
        plot_lr_star(result, out_dir / "lr_star.png")
        plot_regret(result, out_dir / "regret.png")
        click.echo(f"wrote {out_dir / 'compare.json'}, {out_dir / 'lr_star.png'}, {out_dir / 'regret.png'}")
