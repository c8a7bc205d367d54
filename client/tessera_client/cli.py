"""The `tessera` command: the sync client's commands plus the operator groups.

Operator groups (`local`, `admin`) and `blocks` live with the code they drive and are
mounted here, so one console script serves users and operators alike. Their modules
import heavy dependencies lazily, so `tessera --help` stays fast on a client-only install.
"""

from __future__ import annotations

import atexit
import gc
import sys
from importlib import import_module
from importlib.util import find_spec

import typer

from tessera.blocks.cli import blocks_command
from tessera_client.commands import register

app = typer.Typer(
    name="tessera",
    help="Tessera keeps a folder in sync across devices and people.",
    no_args_is_help=True,
    add_completion=False,
)
register(app)  # login, logout, sync, status, ls, history, restore, rm, trash, ...
app.command("blocks")(blocks_command)


@app.callback()
def _tessera() -> None:
    """Tessera keeps a folder in sync across devices and people."""


# Operator groups live with the code they drive; a client-only install ships without them.
# They import the server's stack (psycopg alone is 0.2 s), so a group is mounted only when
# the command line can reach it: its own name, or the top-level help.
_OPERATOR_GROUPS = {
    "local": ("tessera.local.cli", "Run the local cloud and manage its users."),
    "admin": ("tessera.maintenance.cli", "Run maintenance workflows now."),
}


def _mount_operator_groups(argv: list[str]) -> None:
    top = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in _OPERATOR_GROUPS.items():
        if top in (None, name) and find_spec(module) is not None:
            app.add_typer(import_module(module).app, name=name, help=help_text)


def main() -> None:
    """Console-script entry point."""
    _mount_operator_groups(sys.argv[1:])
    # The interpreter's last collections walk every object the imports made (pydantic's
    # models, httpx, rich, typer): 150-240 ms at the exit of every command. Frozen, the
    # objects are skipped by the collector and still freed by reference counting; files
    # are flushed and closed as usual. Registered first, so it runs after every other hook.
    atexit.register(gc.freeze)
    app()
