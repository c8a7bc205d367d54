"""`tessera admin ...`: run a maintenance workflow now, against a local cloud's state dir.

Heavy imports (PostgreSQL, adapters) happen inside the commands, so mounting this group
keeps `tessera --help` fast.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from .context import MaintenanceContext
    from .results import StepResult

app = typer.Typer(
    name="admin",
    help="Run maintenance workflows now.",
    no_args_is_help=True,
    add_completion=False,
)

WORKFLOW_NAMES = ("dedup", "gc", "cold", "scrub")


@contextmanager
def open_state(state: Path, database_url: str | None = None) -> Iterator[MaintenanceContext]:
    """A maintenance context over the local cloud in `state` (works while it is running)."""
    import secrets

    from tessera.adapters.local.block_store import FilesystemBlockStore
    from tessera.adapters.local.change_feed import PostgresChangeFeed
    from tessera.adapters.local.key_file import KeyFileKeyService
    from tessera.adapters.local.secret_files import load_or_create
    from tessera.local.cloud import StatePaths, open_database
    from tessera.metadata import Database, migrate
    from tessera.metadata.key_check import check_block_keys

    from .context import MaintenanceContext
    from .settings import MaintenanceSettings

    paths = StatePaths(state.expanduser().resolve())
    if not paths.key_file.is_file():
        raise FileNotFoundError(f"{paths.root} is not a local cloud state dir (no keys.json)")
    settings = MaintenanceSettings.from_env()
    conninfo, embedded = open_database(paths, database_url or settings.database_url or None)
    try:
        migrate(conninfo)
        secret = load_or_create(paths.url_signing_key, lambda: secrets.token_bytes(32))
        store = FilesystemBlockStore(
            paths.blocks,
            "http://127.0.0.1",
            secret,
            keep_versions_days=settings.local_block_versions_days,
        )
        feed = PostgresChangeFeed(conninfo)
        try:
            with Database(conninfo, min_size=1, max_size=2) as db:
                keys = KeyFileKeyService(paths.key_file)
                check_block_keys(db, keys)  # a swapped key file: every block looks damaged
                yield MaintenanceContext.build(
                    db=db,
                    store=store,
                    keys=keys,
                    feed=feed,
                    settings=settings,
                )
        finally:
            feed.close()
    finally:
        if embedded is not None:
            embedded.stop()


def render(name: str, result: StepResult) -> None:
    """Print `result` as a table (and its errors, if any)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"tessera admin run {name}")
    table.add_column("what")
    table.add_column("count", justify="right")
    for key, value in result.counters().items():
        table.add_row(key.replace("_", " "), f"{value:,}")
    console = Console(markup=False, highlight=False)  # errors name keys and paths as they are
    console.print(table)
    for error in result.errors:
        console.print(f"error: {error}", style="red")


@app.command()
def run(
    workflow: Annotated[str, typer.Argument(help="dedup | gc | cold | scrub")],
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Act as if at this ISO-8601 time (default: now)."),
    ] = None,
    state: Annotated[
        Path, typer.Option("--state", help="The local cloud's state directory.")
    ] = Path(".tessera/local"),
    step: Annotated[
        str | None, typer.Option("--step", help="Run only this step of the workflow, once.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    allow_future: Annotated[
        bool,
        typer.Option(
            "--allow-future",
            help="Accept an --as-of in the future: gc then deletes now what its retention "
            "keeps until then (trash, old versions).",
        ),
    ] = False,
) -> None:
    """Run one maintenance workflow now and print what it did."""
    from tessera.domain.errors import TesseraError
    from tessera.metadata.key_check import BlockKeysMismatch

    from .runner import parse_as_of, run_step, run_workflow

    if workflow not in WORKFLOW_NAMES:
        typer.echo(
            f"error: unknown workflow {workflow!r}; choose one of {', '.join(WORKFLOW_NAMES)}",
            err=True,
        )
        raise typer.Exit(2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        when = parse_as_of(as_of, now=datetime.now(UTC), allow_future=allow_future)
        with open_state(state) as ctx:
            result = (
                run_step(ctx, workflow, step, as_of=when)
                if step
                else run_workflow(ctx, workflow, as_of=when)
            )
    except TesseraError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    except (FileNotFoundError, KeyError, BlockKeysMismatch) as exc:
        typer.echo(f"error: {exc.args[0] if exc.args else exc}", err=True)
        raise typer.Exit(2) from exc
    if json_output:
        typer.echo(json.dumps({"workflow": workflow, **result.to_dict()}, indent=2))
    else:
        render(workflow, result)
    if result.errors:
        raise typer.Exit(1)


@app.command()
def workflows(
    asl: Annotated[
        str | None,
        typer.Option(
            "--asl",
            help="Print the workflow's Step Functions definition for this "
            "Lambda ARN (needs --name).",
        ),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="The workflow.")] = None,
) -> None:
    """List the workflows and their steps, or print one's state machine definition."""
    from .workflows import WORKFLOWS, state_machine_definition

    if asl is not None:
        if name not in WORKFLOWS:
            typer.echo(f"error: --name must be one of {', '.join(WORKFLOWS)}", err=True)
            raise typer.Exit(2)
        typer.echo(json.dumps(state_machine_definition(name, asl), indent=2))
        return
    for wf in WORKFLOWS.values():
        typer.echo(f"{wf.name} ({wf.schedule}; functions/{wf.function}): {wf.description}")
        for s in wf.steps:
            typer.echo(f"  - {s.name}: {s.description}")
