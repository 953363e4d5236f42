"""`scaling compare`: the fitted law against muP / CompleteP transfer on the same sweeps."""
from __future__ import annotations

import click

from mm1model.config import ConfigError
from scaling.compare import DEFAULT_BOOTSTRAP, METRICS, SELECTS, run_compare
from scaling.seed_sets import parse_seed_sets, parse_seeds, run_compare_seed_sets


@click.command("compare")
@click.argument("sweep_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Write compare.json, lr_star.png and regret.png here (default: print only); with "
                   "--seed-sets, one directory per metric and seed set, and agreement.json.")
@click.option("--select", type=click.Choice(SELECTS), default="parabola", show_default=True,
              help="lr* of a size: the parabola's vertex through the best grid point and its neighbours, "
                   "or the best grid point.")
@click.option("--metric", "metrics", type=click.Choice([*METRICS, "both"]), default="overall", show_default=True,
              help="The loss compared: the final validation loss (overall), its text-only source (text), or both.")
@click.option("--seeds", default=None, help="Use only these seeds, e.g. 0,1 (default: every seed run).")
@click.option("--seed-sets", default=None,
              help="Compare on each of these disjoint seed sets, e.g. 0,1/2,3, and report whether the verdicts agree.")
@click.option("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, show_default=True,
              help="Draws over seeds for the intervals and verdicts (0: point figures only).")
@click.option("--bootstrap-seed", type=int, default=0, show_default=True, help="Seed of the bootstrap's draws.")
def compare_command(sweep_dirs: tuple[str, ...], out: str | None, select: str, metrics: str, seeds: str | None,
                    seed_sets: str | None, bootstrap: int, bootstrap_seed: int) -> None:
    """Per parametrization: slope of ln lr* vs ln width / ln depth, hold-out predictions of the
    largest size (fitted law vs base LR reused) with regret, the asymptotic penalty, each with a
    95% interval over seeds, and a verdict per family where the paired difference between the
    roads excludes zero."""
    chosen = list(METRICS) if metrics == "both" else [metrics]
    if seeds is not None and seed_sets is not None:
        raise ConfigError("give --seeds or --seed-sets, not both")
    if seed_sets is not None or len(chosen) > 1:
        sets = parse_seed_sets(seed_sets) if seed_sets is not None else [parse_seeds(seeds) if seeds else None]
        click.echo(run_compare_seed_sets(list(sweep_dirs), sets, out, chosen, select, bootstrap,
                                         bootstrap_seed).summary())
        return
    click.echo(run_compare(list(sweep_dirs), out, select, chosen[0], parse_seeds(seeds) if seeds else None,
                           bootstrap, bootstrap_seed).summary())
