"""`scaling design`: a thin shell over :func:`scaling.design.run_design`."""
from __future__ import annotations

import click

from scaling.design import DEFAULT_NOISE, Design, run_design
from scaling.report import DEFAULT_TARGETS, parse_targets
from scaling.sweep_plan import load_sweep_config


@click.command("design")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Sweep file whose sizes, budget per cell and shapes price the cells, e.g. sweeps/mm1.toml.")
@click.option("--sizes", help="Comma-separated sizes (instead of, or over, the file's).")
@click.option("--points", type=int, default=5, show_default=True, help="LRs per size.")
@click.option("--spacing", type=float, default=0.3, show_default=True, help="Decades between neighbouring LRs.")
@click.option("--seeds", type=int, default=1, show_default=True, help="Seeds per LR.")
@click.option("--prior", "prior_path", type=click.Path(dir_okay=False),
              help="fit.json of the prior law the grids centre on [MM1's law].")
@click.option("--from", "recorded", type=click.Path(exists=False),
              help="A recorded sweep directory or runs table: measure the noise model (and CPU-s per cell) from it.")
@click.option("--curvature", type=float, help=f"Loss curvature below the optimum, nats/(ln lr)^2 [{DEFAULT_NOISE.curvature}].")
@click.option("--asymmetry", type=float, help=f"Curvature above / below the optimum [{DEFAULT_NOISE.asymmetry}].")
@click.option("--seed-sd", type=float, help=f"Seed noise of a run's final loss, nats [{DEFAULT_NOISE.seed_sd}].")
@click.option("--scatter", type=float, help=f"sd of each size's optimum about the law, ln lr [{DEFAULT_NOISE.scatter}].")
@click.option("--prior-sd", type=float, help=f"sd of the true law's intercept about the prior's, ln lr [{DEFAULT_NOISE.prior_sd}].")
@click.option("--targets", default=",".join(DEFAULT_TARGETS), show_default=True, help="Sizes to predict.")
@click.option("--sims", type=int, default=None, help="Simulated sweeps per design [200; 40 per design with --budget].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the simulation.")
@click.option("--budget", type=float, help="Search designs costing at most this (in the cells' cost unit) and "
                                           "print the cost-vs-width front.")
@click.option("--out", type=click.Path(file_okay=False), default="runs/design", show_default=True,
              help="Where --budget writes design_front.csv and design_front.png.")
def design_command(config_path, sizes, points, spacing, seeds, prior_path, recorded, curvature, asymmetry, seed_sd,
                   scatter, prior_sd, targets, sims, seed, budget, out) -> None:
    """Before spending: simulate sweeps of a design through the real selection and regression and
    report the 95% prediction-interval width at each target, the chance each optimum falls inside
    its grid, and the cost."""
    config = load_sweep_config(config_path, sizes=tuple(s.strip() for s in sizes.split(",") if s.strip())
                               if sizes else None)
    noise = dict(curvature=curvature, asymmetry=asymmetry, seed_sd=seed_sd, scatter=scatter, prior_sd=prior_sd)
    result = run_design(config, Design(points, spacing, seeds), prior_path, recorded, noise, parse_targets(targets),
                        sims or (40 if budget is not None else 200), seed, budget, out)
    click.echo(result.summary())
