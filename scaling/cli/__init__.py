"""The `scaling` command: a thin shell over library functions.

Each subcommand lives in its own module here, parses its flags and calls one library function.
Bad input anywhere raises :class:`mm1model.config.ConfigError`; this group turns it into one
line on stderr and exit code 2.
"""
from __future__ import annotations

import click

from mm1model.config import ConfigError


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


# Subcommands register themselves on `main` when their module is imported.
from scaling.cli import sizes  # noqa: E402,F401
from scaling.cli import fit  # noqa: E402,F401
from scaling.cli import sweep  # noqa: E402,F401
from scaling.cli import data  # noqa: E402,F401
from scaling.cli import launch  # noqa: E402,F401
from scaling.cli import coord_check, compare  # noqa: E402,F401
from scaling.cli import summary  # noqa: E402,F401
