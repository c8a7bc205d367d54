"""`tessera blocks FILE`: print a file's content hash and block list."""

from __future__ import annotations

from pathlib import Path

import typer


def blocks_command(
    file: Path = typer.Argument(..., help="The file to chunk."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Print FILE's content hash and its blocks (id, offset, size)."""
    raise typer.Exit(code=1)  # replaced by the block pipeline (issue 2)
