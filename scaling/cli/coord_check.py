"""`scaling coord-check`: does a parametrization keep activations flat across widths or depths?"""
from __future__ import annotations

import sys

import click

from mm1model.parametrization import PARAMETRIZATIONS
from scaling.coord_check import CoordCheckConfig, run_coord_check


@click.command("coord-check")
@click.option("--sizes", required=True,
              help="Comma-separated sizes of one family, e.g. w32,w64,w128,w256 or d2,d4,d8.")
@click.option("--parametrization", "parametrization", type=click.Choice(PARAMETRIZATIONS), default="mup",
              show_default=True)
@click.option("--base-size", default=None, help="Base size of mup / completep (default: the smallest of --sizes).")
@click.option("--alpha", type=float, default=CoordCheckConfig.alpha, show_default=True,
              help="CompleteP depth exponent (0.5 = Depth-muP).")
@click.option("--steps", type=int, default=CoordCheckConfig.steps, show_default=True,
              help="AdamW steps; activations at each step's forward.")
@click.option("--seeds", type=int, default=CoordCheckConfig.seeds, show_default=True,
              help="Model seeds averaged per size.")
@click.option("--lr", type=float, default=CoordCheckConfig.lr, show_default=True, help="AdamW LR of every step.")
@click.option("--threshold", type=float, default=CoordCheckConfig.threshold, show_default=True,
              help="Largest |slope| that passes.")
@click.option("--corpus", default=None, help="Corpus directory (default: the prepared one), or 'synthetic'.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Write coord_check.json and coord_check.png here.")
def coord_check_command(sizes: str, parametrization: str, base_size: str | None, alpha: float, steps: int,
                        seeds: int, lr: float, threshold: float, corpus: str | None, out: str | None) -> None:
    """The coordinate check: log-log slope of every module's mean |activation| against width
    (or depth) over the first steps. Exit 0 when every |slope| <= threshold, 1 otherwise (sp is
    expected to fail)."""
    config = CoordCheckConfig(sizes=tuple(s.strip() for s in sizes.split(",") if s.strip()),
                              parametrization=parametrization, base_size=base_size, alpha=alpha, steps=steps,
                              seeds=seeds, lr=lr, threshold=threshold, corpus=corpus)
    result = run_coord_check(config, out)
    click.echo(result.summary())
    sys.exit(0 if result.passed else 1)
