"""The `scaling` command: a thin shell over library functions.

Each subcommand lives in its own module here, parses its flags, calls one library function and
prints what it returns: ``sweep`` (:func:`scaling.sweep.run_sweeps`), ``status``
(:func:`scaling.sweep.run_status`), ``collect`` (:func:`scaling.sweep.run_collect`), ``launch``
(:func:`scaling.launch.run_launch`), ``data``, ``fit``, ``sizes``, ``coord-check``, ``compare``,
``summary``. Bad input anywhere raises :class:`mm1model.config.ConfigError`; this group turns it
into one line on stderr and exit code 2.
"""
from __future__ import annotations

import click

from mm1model.config import ConfigError
from scaling.cli.collect import collect_command
from scaling.cli.data import data_group
from scaling.cli.launch import launch_command
from scaling.cli.status import status_command
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


for _command in (sweep_command, status_command, collect_command, launch_command, data_group):
    main.add_command(_command)

# These modules still register themselves with `@main.command`, importing `main` from here: an
# import cycle until each defines a plain click command that this module adds, as those above do.
from scaling.cli import sizes  # noqa: E402,F401
from scaling.cli import fit  # noqa: E402,F401
from scaling.cli import coord_check, compare  # noqa: E402,F401
from scaling.cli import summary  # noqa: E402,F401
