"""`tessera local ...`: run the local cloud and manage its users.

Heavy imports (PostgreSQL, uvicorn, argon2) happen inside the commands, so mounting this
group keeps `tessera --help` fast.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from tessera.local.aws_mode import AwsLocalCloud

app = typer.Typer(
    name="local",
    help="Run the local cloud and manage its users.",
    no_args_is_help=True,
    add_completion=False,
)

DEFAULT_STATE = Path(".tessera/local")
StateOption = Annotated[
    Path, typer.Option("--state", help="State directory (database, blocks, keys).")
]
EmailArgument = Annotated[str, typer.Argument(help="The user's email address.")]
PasswordOption = Annotated[
    str | None, typer.Option(help="The password (prompted for when omitted).")
]


class Backend(StrEnum):
    """Which code path serves the API: local adapters, or the Lambda handlers on moto."""

    LOCAL = "local"
    AWS = "aws"


BackendOption = Annotated[
    Backend,
    typer.Option(help="local: local adapters; aws: the Lambda handlers + AWS adapters on moto."),
]
AwsEndpointOption = Annotated[
    str | None,
    typer.Option(
        help="AWS mode: use this endpoint (e.g. a moto_server) instead of moto in-process."
    ),
]


@app.command()
def up(
    state: StateOption = DEFAULT_STATE,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8790,
    demo: Annotated[
        bool, typer.Option(help="Create a demo user on first start and print how to sync.")
    ] = False,
    backend: BackendOption = Backend.LOCAL,
    aws_endpoint: AwsEndpointOption = None,
    public_url: Annotated[
        str | None,
        typer.Option(help="URL clients reach this server at (default http://HOST:PORT)."),
    ] = None,
) -> None:
    """Start the local cloud: PostgreSQL, the API and the block store behind one URL."""
    from tessera.adapters.local.secret_files import InsecureSecretFile
    from tessera.local.cloud import LocalCloud, MissingKeyFile
    from tessera.local.postgres import describe_database
    from tessera.metadata.key_check import BlockKeysMismatch
    from tessera.settings import Settings

    cloud: LocalCloud | AwsLocalCloud
    if backend is Backend.AWS:
        from tessera.local.aws_mode import AwsLocalCloud  # boto3 etc.: only when asked for

        cloud = AwsLocalCloud(
            state,
            host=host,
            port=port,
            aws_endpoint=aws_endpoint,
            settings=Settings.from_env(),
            demo=demo,
        )
    else:
        cloud = LocalCloud(
            state,
            host=host,
            port=port,
            settings=Settings.from_env(),
            demo=demo,
            public_url=public_url,
        )
    try:
        url = cloud.prepare()
    except (OSError, InsecureSecretFile, MissingKeyFile, BlockKeysMismatch) as exc:
        # port taken, unreadable state, a loose, lost or swapped key file
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"Tessera local cloud: {url}  (state: {cloud.state.root})", err=False)
    if isinstance(cloud, LocalCloud) and cloud.database_url:
        # DATABASE_URL is a name many shells export for something else: say it is used
        typer.echo(
            f"Metadata database: {describe_database(cloud.database_url)} (from DATABASE_URL)"
        )
    if warning := exposure_warning(host, public_url):
        typer.echo(warning, err=True)
    if cloud.demo_login is not None:
        email, password = cloud.demo_login
        typer.echo(
            "\nDemo user ready. On this machine, sync a folder with:\n"
            f"  tessera login --server {url} --email {email} --password {password}\n"
            "  tessera sync ~/Tessera\n"
            f"(credentials saved in {cloud.state.demo_credentials})\n"
        )
    typer.echo("Press Ctrl-C to stop.", err=False)
    cloud.serve_forever()
    typer.echo("Tessera local cloud stopped.")


@app.command()
def adduser(
    email: EmailArgument,
    password: PasswordOption = None,
    state: StateOption = DEFAULT_STATE,
    backend: BackendOption = Backend.LOCAL,
    aws_endpoint: AwsEndpointOption = None,
) -> None:
    """Create a user of the local cloud (works while `tessera local up` is running)."""
    from tessera.adapters.local.identity import LocalUsers

    if password is None:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if backend is Backend.AWS:  # the user lives in the (moto) Cognito pool
        from tessera.local.aws_mode import add_user

        with _refusal_exits():
            sub = add_user(state, email, password, aws_endpoint)
        typer.echo(f"created {email} (user id {sub})")
        return
    with _local_database(state) as conninfo, _refusal_exits():
        principal = LocalUsers(conninfo).add(email, password)
    typer.echo(f"created {principal.email} (user id {principal.user_id})")


@contextmanager
def _refusal_exits() -> Iterator[None]:
    """A refusal (`TesseraError`: a taken email, a password too short, no such user) is one
    line on stderr and exit status 1, not a traceback."""
    from tessera.domain.errors import TesseraError

    try:
        yield
    except TesseraError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc


@contextmanager
def _local_database(state: Path) -> Iterator[str]:
    """The migrated metadata database of the local cloud in `state` (its embedded
    PostgreSQL started for the block, unless `DATABASE_URL` names one): its conninfo.
    Exits 1 when `state` holds no local cloud."""
    from tessera.local.cloud import StatePaths, open_database
    from tessera.metadata import migrate
    from tessera.settings import Settings

    paths = StatePaths(Path(state).expanduser().resolve())
    database_url = Settings.from_env().database_url or None
    if database_url is None and not paths.pgdata.is_dir():
        # the default state dir is relative: run elsewhere, this made a new, empty cloud
        # there and acted on it, one the running cloud never saw
        typer.echo(
            f"error: no local cloud at {paths.root}; pass --state with the state dir of the"
            " cloud `tessera local up` runs (or run this where it runs)",
            err=True,
        )
        raise typer.Exit(1)
    conninfo, embedded = open_database(paths, database_url)
    try:
        migrate(conninfo)
        yield conninfo
    finally:
        if embedded is not None:
            embedded.stop()


@app.command()
def passwd(
    email: EmailArgument,
    password: PasswordOption = None,
    state: StateOption = DEFAULT_STATE,
) -> None:
    """Set a local user's password anew, signing out every device that signed in before.

    For a lost password, the demo user's lost credentials, or one that leaked."""
    from tessera.adapters.local.identity import LocalUsers

    if password is None:
        password = typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    with _local_database(state) as conninfo, _refusal_exits():
        principal = LocalUsers(conninfo).reset_password(email, password)
    typer.echo(f"set a new password for {principal.email}; its devices sign in again")


def exposure_warning(host: str, public_url: str | None) -> str | None:
    """What to tell someone serving beyond this machine, or None when it is not."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return None
    said = (
        f"warning: listening on {host}: passwords and tokens travel in plain HTTP, so keep"
        " it to a network you trust, or put it behind TLS (a reverse proxy)"
    )
    if public_url is None and host in ("0.0.0.0", "::", ""):
        said += (
            f"; and http://{host or '0.0.0.0'}:... works from no other machine: pass"
            " --public-url http://THIS-MACHINE:PORT (block URLs point there too)"
        )
    return said


def main() -> None:
    """`python -m tessera.local`."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app(prog_name="tessera local")
