"""`scaling holdout`: the (N, D) law against MM1's N-only practice on a held-out cell
(:func:`scaling.holdout.holdout`)."""
from __future__ import annotations

import click

from mm1model import records
from scaling.fit import read_runs
from scaling.holdout import holdout


@click.command("holdout")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--select", default="parabola", show_default=True, help="Optimum per cell, as `scaling fit --select`.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the result as JSON here.")
def holdout_command(inputs, select, json_out) -> None:
    """Hold out the largest size's longest horizon and predict its optimum two ways: the (N, D)
    law of the other cells and the N-only law of the shortest horizons."""
    result = holdout(read_runs(list(inputs)), select)
    if json_out:
        records.write_json(json_out, result.to_json())
    click.echo(result.summary())
