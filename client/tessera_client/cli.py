"""The `tessera` command: the sync client's commands plus the operator groups.

Operator groups (`local`, `admin`) and `blocks` live with the code they drive and are
mounted here, so one console script serves users and operators alike. Their modules
import heavy dependencies lazily, so `tessera --help` stays fast on a client-only install.
"""

from __future__ import annotations

from importlib.util import find_spec

import typer

from tessera.blocks.cli import blocks_command

app = typer.Typer(
    name="tessera",
    help="Tessera keeps a folder in sync across devices and people.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("blocks")(blocks_command)

if find_spec("psycopg") is not None:  # the operator groups need the `server` extra
    from tessera.local.cli import app as local_app
    from tessera.maintenance.cli import app as admin_app

    app.add_typer(local_app, name="local", help="Run the local cloud and manage its users.")
    app.add_typer(admin_app, name="admin", help="Run maintenance workflows now.")


def main() -> None:
    """Console-script entry point."""
    app()
