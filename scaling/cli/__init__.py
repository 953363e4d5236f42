"""The `scaling` command: a thin shell over library functions.

Each subcommand lives in its own module here, parses its flags, calls one library function and
prints what it returns: ``sweep`` (:func:`scaling.sweep.run_sweeps`), ``status``
(:func:`scaling.sweep.run_status`), ``collect`` (:func:`scaling.sweep.run_collect`), ``launch``
(:func:`scaling.launch.run_launch`), ``data``, ``fit``, ``sizes``, ``coord-check``, ``compare``,
``holdout`` (:func:`scaling.holdout.holdout`), ``design`` (:func:`scaling.design.run_design`), ``summary``, ``export`` (:func:`mm1model.export.export_run`). Each module defines a plain
click command and this one adds them, so no command module imports this package. Bad input anywhere raises :class:`mm1model.config.ConfigError`; this group turns it
into one line on stderr and exit code 2.
"""
from __future__ import annotations

import click

from mm1model.config import ConfigError
from scaling.cli.collect import collect_command
from scaling.cli.compare import compare_command
from scaling.cli.coord_check import coord_check_command
from scaling.cli.data import data_group
from scaling.cli.design import design_command
from scaling.cli.export import export_command
from scaling.cli.fit import fit_command
from scaling.cli.holdout import holdout_command
from scaling.cli.launch import launch_command
from scaling.cli.sizes import sizes_command
from scaling.cli.status import status_command
from scaling.cli.summary import summary_command
from scaling.cli.sweep import sweep_command


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ConfigError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(2)


@click.group(cls=_Group)
def main() -> None:
    """Learning-rate scaling for MM1-style multimodal pre-training."""


# In the order of the workflow: look at the sizes, sweep, watch, collect, fit, launch, export;
# then the transfer tools and the data.
for _command in (sizes_command, design_command, sweep_command, status_command, collect_command, fit_command, holdout_command,
                 summary_command,
                 launch_command, export_command, coord_check_command, compare_command, data_group):
    main.add_command(_command)
