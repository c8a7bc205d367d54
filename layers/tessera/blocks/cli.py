"""`tessera blocks FILE [--json]`: print a file's content hash and its blocks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tessera.blocks.chunking import FileManifest, scan_file
from tessera.blocks.errors import FileChangedError

_TABLE_WIDTH = 100
EXIT_CHANGED = 2  # the file changed while read: worth retrying, unlike a missing file (1)


# readable=False: click's own check would exit 2 with a generic message; scan_file's errors
# get ours.
def blocks_command(
    file: Annotated[
        Path, typer.Argument(help="The file to chunk.", metavar="FILE", readable=False)
    ],
    json_output: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table.")
    ] = False,
) -> None:
    """Print FILE's content hash and its blocks (id, offset, size)."""
    try:
        manifest = scan_file(file)
    except FileChangedError as e:
        _fail(e.message, EXIT_CHANGED)
    except FileNotFoundError:
        _fail(f"{file}: no such file; check the path", 1)
    except PermissionError:
        _fail(f"{file}: permission denied; run as a user who may read it", 1)
    except IsADirectoryError:
        _fail(f"{file}: is a directory; pass a regular file", 1)
    except OSError as e:
        _fail(f"{file}: cannot read it ({e.strerror or e}); pass a readable regular file", 1)
    if json_output:
        typer.echo(json.dumps(manifest.as_dict()))
    else:
        _print_table(file, manifest)


def _fail(message: str, code: int) -> None:
    typer.echo(f"tessera blocks: {message}", err=True)
    raise typer.Exit(code)


def _print_table(file: Path, manifest: FileManifest) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{file} — {manifest.size} bytes, {len(manifest.blocks)} blocks")
    table.add_column("#", justify="right")
    table.add_column("offset", justify="right")
    table.add_column("size", justify="right")
    table.add_column("id", no_wrap=True, min_width=67)  # a whole id: "b3:" + 64 hex
    for i, b in enumerate(manifest.blocks):
        table.add_row(str(i), str(b.offset), str(b.size), b.id)
    console = Console(markup=False, highlight=False)  # a file name is printed as it is
    if console.width < _TABLE_WIDTH:  # never cut ids short, even when piped (80 columns)
        console = Console(width=_TABLE_WIDTH, markup=False, highlight=False)
    console.print(f"content hash: {manifest.content_hash}", soft_wrap=True)
    console.print(table)
