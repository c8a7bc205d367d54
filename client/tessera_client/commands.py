"""The user commands of `tessera` (login, sync, status, ls, history, ...), mounted by `cli.py`.

Every expected failure (not logged in, server unreachable, no such file, no access, ...)
is printed as one line saying what went wrong and what to do, with a non-zero exit code —
never a traceback. Listing commands take `--json`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Column, Table
from rich.text import Text

from tessera.api.models import EMAIL_PATTERN
from tessera_client import invitations
from tessera_client.api import (
    FOREIGN_ERROR,
    MALFORMED_RESPONSE,
    Api,
    ApiError,
    NotLoggedIn,
    RetryPolicy,
    ServerUnreachable,
    list_pages,
    sign_in,
)
from tessera_client.config import DamagedFileError, Home, Settings, hold_device_lock
from tessera_client.paths import UnsafePathError, canonical_rel, printable
from tessera_client.reporting import Reporter, RoundResult, SyncError
from tessera_client.state import StateDB

# No markup: paths, file names, emails and server messages are printed as they are. With
# it, a file named "a[/]b" made rich raise MarkupError mid-sync, and "[red]x" printed red.
# Styles are given explicitly instead (`style=`, `Text`).
out = Console(markup=False, highlight=False)
err = Console(stderr=True, markup=False, highlight=False)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]

EXIT_ERROR = 1
EXIT_PAUSED = 3
EXIT_INTERRUPTED = 130  # (128 + SIGINT, as a shell reports it)


class UserError(Exception):
    """An expected problem, told to the user in one line."""


def say_error(message: str) -> None:
    """Print `message` on stderr after a red "error:"."""
    err.print(Text.assemble(("error:", "red"), " ", message))


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Turn expected errors into one clear line and an exit code."""
    try:
        yield
    except NotLoggedIn as e:
        say_error(str(e))
        raise typer.Exit(EXIT_ERROR) from None
    except ServerUnreachable as e:
        if "WRONG_VERSION_NUMBER" in str(e):  # TLS spoken to a server of plain HTTP
            say_error(f"{e}. The server speaks plain HTTP: log in with its http:// URL")
        else:
            say_error(
                f"{e}. Nothing was lost: run the command again once the server is back (if"
                " it never answers, check its URL: `tessera login --server ...`)"
            )
        raise typer.Exit(EXIT_ERROR) from None
    except ApiError as e:
        hint = _hint(e)
        say_error(e.message + (f" — {hint}" if hint else ""))
        raise typer.Exit(EXIT_ERROR) from None
    except (UserError, SyncError, UnsafePathError, DamagedFileError) as e:
        say_error(str(e))
        raise typer.Exit(EXIT_ERROR) from None
    except sqlite3.DatabaseError as e:
        # the extended code's low byte is the primary one (SQLITE_CORRUPT_INDEX is 779)
        if ((getattr(e, "sqlite_errorcode", None) or 0) & 0xFF) in _NOT_A_DATABASE:
            say_error(
                f"this device's state database is damaged ({e}); move {_home().state_file}"
                " aside and sync again: it compares the folder and the server afresh (files"
                " on one side only are kept, never deleted)"
            )
        else:  # locked, read-only, an I/O error: passing, and the state is still good
            say_error(f"this device's state database: {e}; try again")
        raise typer.Exit(EXIT_ERROR) from None


# What to do about a 404, by what was not found (a hint about paths had followed every
# one: an unknown email, a rev, an id)
_NOT_FOUND_HINTS = (
    ("nothing at ", "check the path (`tessera ls`)"),
    ("no rev ", "see its versions with `tessera history PATH`"),
    ("no file with id ", "see the ids of deleted files with `tessera trash`"),
)


def _hint(error: ApiError) -> str:
    """What the user can do about `error`, when there is something to say."""
    if error.status == 404:
        return next((h for start, h in _NOT_FOUND_HINTS if error.message.startswith(start)), "")
    if error.details.get("reason"):  # the server's message says what to do (no race)
        return ""
    return {
        401: "log in again with `tessera login`",
        403: "you do not have the right to do this here",
        409: "it changed meanwhile or the name is taken; sync and try again",
    }.get(error.status, "")


# SQLite's answers for a file that is not a database, or a damaged one (SQLITE_NOTADB,
# SQLITE_CORRUPT): only then is moving it aside the cure
_NOT_A_DATABASE = (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT)


def _home() -> Home:
    return Home()


def _api(home: Home, settings: Settings) -> Api:
    if not settings.server_url:
        raise UserError("no server configured; run `tessera login --server URL --email E`")
    return Api(settings.server_url, home, policy=RetryPolicy(attempts=settings.retry_attempts))


# What Ctrl-C says: of a sync or a download (what was on its way resumes), and of a request
# (which may have been carried out: the answer was what did not come)
STOPPED_TRANSFERS = (
    "Stopped: nothing was lost. What was on its way resumes at the next run (a partial"
    " download is kept beside its file, hidden)."
)
STOPPED_REQUEST = (
    "Stopped. If the request had reached the server it may have been carried out: look"
    " (`tessera ls`, `tessera trash`) before you run it again."
)


@contextmanager
def _server(stopped: str = STOPPED_REQUEST) -> Iterator[tuple[Api, Settings]]:
    """The signed-in API client and this device's settings; the client is closed after.
    Ctrl-C says `stopped`."""
    home = _home()
    settings = home.load_settings()
    api = _api(home, settings)
    try:
        with _ctrl_c_ends_retries(api, stopped):
            yield api, settings
    finally:
        api.close()


@contextmanager
def _ctrl_c_ends_retries(api: Api, stopped: str) -> Iterator[None]:
    """Ctrl-C ends the waits between retries, and the block transfers, on every thread too
    (`Api.stop`): a download waiting out an outage's backoff, or a block from a slow store,
    on a worker thread held the exit for minutes.
    Then it says `stopped` and exits 130 (it had ended without a word). (The handler is
    left alone where SIGINT is ignored, as for a job started with `&`, and off the main
    thread, where none can be set.)"""

    def interrupt(signum: int, frame: object) -> None:
        api.stop()
        raise KeyboardInterrupt

    settable = threading.current_thread() is threading.main_thread()
    # (None: a handler not set from Python, which cannot be set back: the default then)
    previous = (signal.getsignal(signal.SIGINT) or signal.SIG_DFL) if settable else signal.SIG_IGN
    if previous is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    except KeyboardInterrupt:
        err.print(stopped)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        if previous is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, previous)


def _server_path(path: str, settings: Settings) -> str:
    """A command's PATH argument as a server path (`/a/b`).

    Absolute paths must lie inside the synced folder; relative ones are taken from the
    current folder when it is inside the synced folder, else from the synced folder's top.
    """
    if path in ("", "/", "."):
        if not settings.folder or path != "." or not _inside(Path.cwd(), settings):
            return ""
        rel = Path.cwd().resolve().relative_to(Path(settings.folder))
        return "" if str(rel) == "." else "/" + canonical_rel(rel.as_posix())
    p = Path(path)
    if p.is_absolute() or (settings.folder and _inside(Path.cwd(), settings)):
        if not settings.folder:
            raise UserError("no synced folder yet; run `tessera sync DIR` first")
        full = Path(os.path.normpath(Path.cwd() / p))
        if not _inside(full, settings):
            raise UserError(f"{path} is not inside the synced folder {settings.folder}")
        rel = full.relative_to(Path(settings.folder))
        return "" if str(rel) == "." else "/" + canonical_rel(rel.as_posix())
    return "/" + canonical_rel(path.strip("/"))


def _inside(p: Path, settings: Settings) -> bool:
    folder = Path(settings.folder)
    full = Path(os.path.normpath(p.absolute()))
    return full == folder or folder in full.parents


def _emit(data: Any, as_json: bool, render: Callable[[], None]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        render()


def _when(stamp: str | None) -> str:
    """A server timestamp to the second, in UTC (tables; `--json` keeps the full one)."""
    if not stamp:
        return ""
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _size(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


# -- account --------------------------------------------------------------------------


def login(
    server: Annotated[str, typer.Option(help="The server's base URL.")],
    email: Annotated[str, typer.Option(help="Your email address.")],
    password: Annotated[str | None, typer.Option(help="Password (prompted when omitted).")] = None,
    device: Annotated[
        str | None, typer.Option(help="This device's name (default: the hostname).")
    ] = None,
) -> None:
    """Log in: stores a refresh token (0600) under TESSERA_HOME."""
    with friendly_errors():
        server = _server_url(server)
        if password is None:
            password = typer.prompt("Password", hide_input=True)
        home = _home()
        before = home.load_settings()
        try:
            account = sign_in(home, server, email, password, device)
        except ApiError as e:
            if e.code in (FOREIGN_ERROR, MALFORMED_RESPONSE):  # not a Tessera server's answer
                raise UserError(
                    f"no Tessera server answers at {server} ({e.status} {e.message}): check"
                    " the URL's scheme, host, port and path"
                ) from None
            if e.status in (400, 401, 403):
                raise UserError("wrong email or password") from None
            raise
        settings = home.load_settings()
        out.print(f"Logged in to {settings.server_url} as {email} (device {settings.device_name}).")
        out.print(_used(account.get("used_bytes"), account.get("quota_bytes")))
        if before.folder and before.email and before.email.casefold() != email.casefold():
            err.print(
                f"Note: this device syncs {before.folder} for {before.email}; `tessera sync`"
                f" will not put its files in {email}'s account. Use another TESSERA_HOME to"
                f" sync a folder for {email}.",
                style="yellow",
            )


def _server_url(given: str) -> str:
    """`--server` without the spaces around it, or a clear refusal at once (an address
    without its scheme had waited out every retry, then said httpx's words). (`sign_in`
    drops a trailing slash.)"""
    url = given.strip()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in url:
        raise UserError(
            f"{given!r} is not a server URL: give it as http://HOST:PORT or https://HOST"
            " (with its path, if the server has one)"
        )
    return url


def account(as_json: JsonOption = False) -> None:
    """Show who this device is signed in as, and the storage used of the quota."""
    with friendly_errors(), _server() as (api, _settings):
        info = api.call("/v1/account", method="GET")
        used, quota = info.get("used_bytes"), info.get("quota_bytes")

        def render() -> None:
            out.print(f"{info['email']}: {_used(used, quota)}")

        _emit(info, as_json, render)


def _used(used: int | None, quota: int | None) -> str:
    """'1.2 GiB of 10.0 GiB used (12 %)': what an account's figures say."""
    said = f"{_size(used)} of {_size(quota)} used"
    if used is not None and quota:
        said += f" ({100 * used / quota:.0f} %)"
    return said


def logout() -> None:
    """Sign this device out: its session ends on the server, and its tokens are deleted."""
    with friendly_errors():
        home = _home()
        try:
            if home.load_tokens() is None:
                out.print("Not logged in.")
                return
            settings = home.load_settings()
        except DamagedFileError as e:  # nothing the server can be told: forget them
            home.clear_tokens()
            out.print(f"Logged out on this device ({e})")
            return
        try:
            lock = hold_device_lock(home)
        except SyncError:
            # it would write back the tokens it holds at its next refresh
            raise UserError("a sync is running on this device; stop it, then log out") from None
        with closing(lock):
            untold = _sign_out_on_server(home, settings)
            home.clear_tokens()
        if untold is None:
            out.print("Logged out (the session is ended on the server too).")
        else:
            out.print(
                f"Logged out on this device; the server could not be told ({untold}), so"
                " its session ends by itself within 30 days"
            )


def _sign_out_on_server(home: Home, settings: Settings) -> str | None:
    """End this device's session on the server; why not, when it could not."""
    if not settings.server_url:
        return "no server configured"
    api = Api(settings.server_url, home, policy=RetryPolicy(attempts=2))
    try:
        api.revoke()
    except (ApiError, ServerUnreachable) as e:
        return str(e)
    finally:
        api.close()
    return None


# -- sync -----------------------------------------------------------------------------


def _transfer_bars() -> Progress:
    """Progress bars for files on their way: name, bar, bytes, speed (on stderr)."""
    return Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=True,
    )


def _live(reporter: ConsoleReporter) -> Live:
    """The live display of `reporter`'s bars on stderr (events print above them)."""
    return Live(reporter.progress, console=err, refresh_per_second=4, transient=True)


class ConsoleReporter(Reporter):
    """Prints events and problems; progress bars for large transfers."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.progress = _transfer_bars()
        self._tasks: dict[str, Any] = {}
        self.status = "starting"

    def event(self, message: str) -> None:
        # A plain line: rich's print took 0.15-0.4 ms of CPU per event, a tenth of the
        # client's CPU in a sync of 1,000 small files. Paths hold no control characters
        # (paths.canonical_rel), and under a Live display stderr is rich's proxy, which
        # puts the line above the bars.
        if not self.quiet:
            err.file.write(message + "\n")

    def problem(self, message: str) -> None:
        err.print(message, style="yellow")

    def transfer(self, path: str, done: int, total: int) -> None:
        if self.quiet:
            return
        if path not in self._tasks:
            self._tasks[path] = self.progress.add_task(path, total=total)
        self.progress.update(self._tasks[path], completed=done)
        if done >= total:
            self.progress.remove_task(self._tasks.pop(path))


def sync(
    folder: Annotated[Path, typer.Argument(help="The folder to keep in sync.")],
    once: Annotated[
        bool, typer.Option("--once", help="Sync until both sides are quiet, then exit.")
    ] = False,
    allow_mass_delete: Annotated[
        bool, typer.Option("--allow-mass-delete", help="Go ahead with a large deletion.")
    ] = False,
    instead: Annotated[
        bool,
        typer.Option(
            "--instead",
            help="Sync FOLDER in place of the folder this device syncs now, which is left as"
            " it is, no longer synced.",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only print problems.")] = False,
) -> None:
    """Keep FOLDER in sync (a daemon with a live status line; --once to sync and exit)."""
    with friendly_errors():
        home = _home()
        settings = home.load_settings()
        folder = folder.expanduser().resolve()
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{folder} is not a folder")
        if home.path == folder or folder in home.path.parents:
            raise UserError(f"TESSERA_HOME ({home.path}) must not be inside the synced folder")
        api = _api(home, settings)
        from tessera_client.engine import SyncEngine  # pydantic models: only when syncing

        reporter = ConsoleReporter(quiet=quiet)
        engine = SyncEngine(
            home,
            settings,
            folder,
            api,
            allow_mass_delete=allow_mass_delete,
            reporter=reporter,
            instead=instead,
        )
        # only once the engine took the folder on: the other commands map their paths from
        # it, and a refused one (another folder this device does not sync, a typo) would
        # send `rm`, `restore` and `share` to the wrong files
        if settings.folder != str(folder):
            settings.folder = str(folder)
            home.save_settings(settings)
        try:
            with _ctrl_c_ends_retries(api, STOPPED_TRANSFERS):
                if once:
                    # the bars of large files, as the daemon shows them: a first sync of
                    # gigabytes had printed nothing until its first file was done
                    bars = nullcontext() if quiet else _live(reporter)
                    with bars:
                        result = engine.run_once()
                    engine.tell_invitations()
                    for p in result.problems:
                        err.print(str(p), style="red")
                    if result.paused_deletes:
                        raise typer.Exit(EXIT_PAUSED)
                    if result.problems:
                        raise typer.Exit(EXIT_ERROR)
                    if not quiet:
                        left_out = (
                            f" ({result.skipped} left out, as said above)" if result.skipped else ""
                        )
                        out.print(f"In sync: {folder}{left_out}")
                    return
                _daemon(engine, reporter, folder)
        finally:
            engine.close()
            api.close()


def _daemon(engine: Any, reporter: ConsoleReporter, folder: Path) -> None:
    def stop(*_: Any) -> None:
        engine.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    started = time.time()

    def status_line(r: RoundResult) -> str:
        if r.paused_deletes:
            return f"paused: {r.paused_deletes} deletions wait for --allow-mass-delete"
        if r.disk_full:
            return "disk full: downloads stopped"
        state = "syncing…" if r.ops or r.unstable else "up to date"
        return f"{folder}: {state} (last check {time.strftime('%H:%M:%S')})"

    with _live(reporter) as live:

        def on_round(r: RoundResult) -> None:
            reporter.status = status_line(r)
            engine.state.set_meta("status", reporter.status)
            if r.ops:
                live.console.print(reporter.status)

        err.print(f"Syncing {folder} (Ctrl-C to stop).")
        engine.run_daemon(on_round=on_round)
    err.print(f"Stopped after {time.time() - started:.0f}s.")


# -- status and listings --------------------------------------------------------------


def status(as_json: JsonOption = False) -> None:
    """Show this device's login, folder, last sync, pending work and conflicts."""
    with friendly_errors():
        _status(as_json)


def _status(as_json: bool) -> None:
    home = _home()
    settings = home.load_settings()
    tokens = home.load_tokens()
    data: dict[str, Any] = {
        "home": str(home.path),
        "server": settings.server_url,
        "email": settings.email,
        "device": settings.device_name,
        "logged_in": tokens is not None,
        "folder": settings.folder,
    }
    if home.state_file.exists():
        state = StateDB(home.state_file)
        try:
            last = state.get_meta("last_sync")
            base = state.base_tree()
            data.update(
                files=sum(1 for e in base.values() if e.is_file),
                folders=sum(1 for e in base.values() if not e.is_file),
                last_sync=float(last) if last else None,
                pending_uploads=len(state.list_pending("upload")),
                conflicts=len(state.conflicts()),
                paused_deletes=int(state.get_meta("paused_deletes") or 0),
                status=state.get_meta("status"),
            )
        finally:
            state.close()

    def render() -> None:
        for k, v in data.items():
            if k == "last_sync" and v:
                v = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v))
            out.print(f"{k.replace('_', ' ')}: {v if v not in (None, '') else '-'}")

    _emit(data, as_json, render)


def ls(
    path: Annotated[str, typer.Argument(help="Folder to list (default: the top).")] = "",
    as_json: JsonOption = False,
) -> None:
    """List a folder on the server."""
    with friendly_errors(), _server() as (api, settings):
        entries = _listing(api, _server_path(path, settings))

        def render() -> None:
            table = Table("name", "kind", "size", "rev", "modified (UTC)", box=None)
            for e in sorted(entries, key=lambda e: (e[".tag"] != "folder", e["name"].lower())):
                kind = e[".tag"] + (f" (shared, {e['access']})" if e.get("access") else "")
                table.add_row(
                    e["name"],
                    kind,
                    _size(e.get("size")),
                    str(e.get("rev", "")),
                    _when(e.get("mtime")),
                )
            out.print(table)

        _emit(entries, as_json, render)


def _listing(api: Api, path: str, *, recursive: bool = False) -> list[dict[str, Any]]:
    """Every entry of a folder's listing (its subtree's, `recursive`), page by page."""
    answer = api.call("/v1/list_folder", {"path": path, "recursive": recursive})
    return [entry for page in list_pages(api, answer) for entry in page.entries]


def history(
    path: Annotated[str, typer.Argument(help="The file.")],
    as_json: JsonOption = False,
) -> None:
    """Show a file's versions, newest first."""
    with friendly_errors(), _server() as (api, settings):
        answer = api.call("/v1/revisions", {"path": _server_path(path, settings), "limit": 100})

        def render() -> None:
            if answer.get("is_deleted"):
                out.print("(deleted — `tessera undelete` brings it back)")
            table = Table("rev", "size", "modified (UTC)", "server time (UTC)", box=None)
            for e in answer["entries"]:
                table.add_row(
                    str(e["rev"]),
                    _size(e["size"]),
                    _when(e.get("mtime")),
                    _when(e["server_modified"]),
                )
            out.print(table)

        _emit(answer, as_json, render)


# Several deleted files can have had one path; a path names the live one, else the one
# deleted last: the others are reached by the file_id `tessera trash` shows.
FileIdOption = Annotated[
    str | None,
    typer.Option("--id", help="The file's id (from `tessera trash`), instead of its PATH."),
]


def _path_or_id(path: str | None, file_id: str | None, settings: Settings) -> dict[str, str]:
    """The request's `path` or `file_id`, from exactly one of the two arguments."""
    if path is not None and file_id is not None:
        raise UserError("give the file's PATH or its --id, not both")
    if path is not None:
        return {"path": _server_path(path, settings)}
    if file_id is not None:
        return {"file_id": file_id}
    raise UserError("give the file's PATH, or its --id (`tessera trash` shows ids)")


def restore(
    rev: Annotated[int, typer.Option("--rev", min=1, help="The version to bring back.")],
    path: Annotated[str | None, typer.Argument(help="The file.")] = None,
    file_id: FileIdOption = None,
) -> None:
    """Make an old version the current one (a new version; history is kept)."""
    with friendly_errors(), _server() as (api, settings):
        entry = api.call("/v1/restore", {**_path_or_id(path, file_id, settings), "rev": rev})
        out.print(f"Restored {entry['path_display']} to rev {rev} (now rev {entry['rev']}).")


def get(
    path: Annotated[str | None, typer.Argument(help="The file or folder on the server.")] = None,
    rev: Annotated[
        int | None,
        typer.Option("--rev", min=1, help="A file's version (default: the current one)."),
    ] = None,
    to: Annotated[
        Path | None,
        typer.Option("--to", "-o", help="Where to save it: a new name, or a folder to put it in."),
    ] = None,
    file_id: FileIdOption = None,
) -> None:
    """Download a file (in the trash too), an old version of it, or a folder, without syncing.

    Never over a file: a file already at the target is left alone."""
    with friendly_errors(), _server(STOPPED_TRANSFERS) as (api, settings):
        where = _path_or_id(path, file_id, settings)
        try:
            entry = api.call("/v1/metadata", where)
        except ApiError as e:
            if e.status != 404:
                raise
            history = _deleted_file(api, where)
            latest = dict(history["entries"][0])
            # (undeleted since the 404, it is a live file again)
            _get_file(api, settings, latest, rev, to, in_trash=bool(history["is_deleted"]))
            return
        if entry[".tag"] == "folder":
            if rev is not None:
                raise UserError("--rev names a version of a file; a folder has none")
            _get_folder(api, settings, entry, to)
        else:
            _get_file(api, settings, entry, rev, to)


def _deleted_file(api: Api, where: dict[str, str]) -> dict[str, Any]:
    """The history (`/v1/revisions`, newest version only) of the file in the trash at
    `where`: a path no live entry holds (the entry deleted there last), or a file_id. The
    server's 404 when there is none."""
    try:
        return dict(api.call("/v1/revisions", {**where, "limit": 1}))
    except ApiError as e:
        if e.status != 422:  # (a path the server refuses was refused as metadata: a 422 now
            raise  # says it names a deleted folder, not a file)
        shown = where.get("path") or where.get("file_id")
        raise UserError(
            f"{shown} is a deleted folder: `tessera undelete` it first (a file deleted"
            " there before it: `tessera get --id ID`, ids from `tessera trash`)"
        ) from None


def _get_file(
    api: Api,
    settings: Settings,
    entry: dict[str, Any],
    rev: int | None,
    to: Path | None,
    *,
    in_trash: bool = False,
) -> None:
    from tessera_client.getfile import download_to, target  # the transfers: only here
    from tessera_client.transfer import (
        BlockReportedError,
        IntegrityError,
        LocalChangedError,
        RestoringError,
    )

    latest = rev in (None, entry["rev"])
    # an earlier version's size is not listed: its bar counts on without an end
    bars, advance = _one_bar(entry["name"], entry["size"] if latest else None)
    try:
        dest = target(to, entry["name"])
        with bars:
            download_to(
                api,
                dest,
                entry["file_id"],
                entry["rev"] if rev is None else rev,
                content_hash=entry["content_hash"] if latest else "",
                device=settings.device_name,
                progress=advance,
                include_deleted=in_trash,
            )
    except RestoringError as e:
        raise _come_back_after_restore(entry["path_display"], e.retry_after) from None
    except BlockReportedError as e:
        raise UserError(f"{e}; run this again in a minute") from None
    except (IntegrityError, LocalChangedError, OSError) as e:
        raise UserError(f"{entry['path_display']} was not saved: {e}") from None
    notes = ([] if latest else [f"rev {rev}"]) + (["from the trash"] if in_trash else [])
    version = f" ({', '.join(notes)})" if notes else ""
    out.print(f"Saved {entry['path_display']}{version} as {dest}.", soft_wrap=True)


def _get_folder(api: Api, settings: Settings, folder: dict[str, Any], to: Path | None) -> None:
    from tessera_client.getfile import download_folder, folder_contents, target

    where = folder["path_display"]
    folders, files = folder_contents(folder, _listing(api, where, recursive=True))
    bars, advance = _one_bar(folder["name"], sum(f.size for f in files))
    try:
        dest = target(to, folder["name"])
        with bars:
            result = download_folder(
                api, dest, folders, files, device=settings.device_name, progress=advance
            )
    except (FileExistsError, NotADirectoryError) as e:
        name = e.filename or to
        raise UserError(
            f"{where} was not saved: {name} is a file, not a folder; give --to a folder, or a"
            " new name"
        ) from None
    except OSError as e:
        raise UserError(f"{where} was not saved: {e}") from None
    for problem in sorted(result.problems):
        err.print(f"left out {problem}", style="yellow", markup=False, soft_wrap=True)
    files_saved = f"{result.saved} file{'' if result.saved == 1 else 's'}"
    there = f", {result.kept} there already" if result.kept else ""
    out.print(f"Saved {where} as {dest}: {files_saved}{there}.", soft_wrap=True)
    if result.restore_wait_s:
        raise _come_back_after_restore(f"files of {where}", result.restore_wait_s)
    if result.problems:
        raise typer.Exit(EXIT_ERROR)


def _one_bar(name: str, total: int | None) -> tuple[Progress, Callable[[str, int], None]]:
    """A progress bar for `get` (none in a pipe, where it left a blank line) and what
    advances it."""
    bars = _transfer_bars()
    bars.disable = not err.is_terminal
    task = bars.add_task(name, total=total)
    return bars, lambda _name, nbytes: bars.advance(task, nbytes)


def _come_back_after_restore(what: str, retry_after: float) -> UserError:
    minutes = max(1, round(retry_after / 60))
    return UserError(
        f"{what} in cold storage: the restore has begun; run this again in about"
        f" {minutes} min (what was saved stays)"
    )


def rm(path: Annotated[str, typer.Argument(help="File or folder to delete.")]) -> None:
    """Delete a file or folder on the server (it goes to the trash)."""
    with friendly_errors(), _server() as (api, settings):
        target = _server_path(path, settings)
        if not target:
            raise UserError("refusing to delete the whole tree")
        entry = api.call("/v1/delete", {"path": target})
    where = entry["path_display"]
    if entry.get("shared_ns_id") and entry.get("access") in ("editor", "viewer"):
        # a member's delete of the mount point leaves the share: nothing is in their trash
        out.print(f"Left {where}: its files stay for the others; the owner may invite you again.")
    else:
        out.print(f"Deleted {where} (restore with `tessera undelete`).")


def trash(as_json: JsonOption = False) -> None:
    """List deleted files that can still be restored."""
    with friendly_errors(), _server() as (api, _settings):
        answer = api.call("/v1/trash/list", {"path": ""})
        entries = answer["entries"]

        def render() -> None:
            # ids in full: `tessera undelete --id` takes them
            widest = max((len(e["file_id"]) for e in entries), default=0)
            table = Table(
                "path",
                "kind",
                "size",
                "deleted at (UTC)",
                Column("id", no_wrap=True, min_width=widest),
                box=None,
            )
            for e in entries:
                table.add_row(
                    e["path_display"],
                    e["kind"],
                    _size(e.get("size")),
                    _when(e["deleted_at"]),
                    e["file_id"],
                )
            out.print(table if entries else "The trash is empty.")

        _emit(entries, as_json, render)


def undelete(
    path: Annotated[str | None, typer.Argument(help="The deleted file or folder.")] = None,
    file_id: FileIdOption = None,
) -> None:
    """Bring back a deleted file or folder from the trash."""
    with friendly_errors(), _server() as (api, settings):
        entry = api.call("/v1/restore", _path_or_id(path, file_id, settings))
        out.print(f"Restored {entry['path_display']}.")


def share(
    path: Annotated[str, typer.Argument(help="The folder to share.")],
    email: Annotated[str, typer.Argument(help="Who to share it with.")],
    access: Annotated[str, typer.Option(help="editor or viewer.")] = "editor",
) -> None:
    """Share a folder with someone as editor or viewer."""
    with friendly_errors():
        access = access.lower()
        if access not in ("editor", "viewer"):
            raise UserError("--access must be editor or viewer")
        _check_email(email)
        with _server() as (api, settings):
            entry = api.call(
                "/v1/share",
                {"path": _server_path(path, settings), "email": email, "access": access},
            )
        where = entry["path_display"]
        if any(m["email"].lower() == email.lower() for m in entry.get("members", [])):
            out.print(f"{email} now has {where} as {access}.")
        else:
            named = invitations.argument(entry)
            out.print(
                f"Invited {email} to {where} as {access}: it reaches them once they accept"
                f" (`tessera accept {named}`)."
            )


def _check_email(email: str) -> None:
    """A clear refusal of what is no email address, before any call (the server's answer
    was its validator's: "String should match pattern ...")."""
    if not re.fullmatch(EMAIL_PATTERN, email):
        raise UserError(f"{email!r} is not an email address")


def unshare(
    path: Annotated[str, typer.Argument(help="The shared folder.")],
    email: Annotated[
        str | None,
        typer.Argument(
            help="The member to remove, or whose invitation to withdraw (the owner; without"
            " it, everyone else)."
        ),
    ] = None,
) -> None:
    """Stop sharing a folder with someone, or with everyone; a member leaves it."""
    with friendly_errors(), _server() as (api, settings):
        request = {"path": _server_path(path, settings)}
        if email is not None:
            _check_email(email)
            request["email"] = email
        entry = api.call("/v1/unshare", request)
    where = entry["path_display"]
    if entry["access"] != "owner":
        # what the owner shared leaves this device at its next sync; edits not yet
        # synced stay (docs/client.md)
        out.print(f"Left {where}: it leaves your devices at their next sync.")
    elif email is not None:
        out.print(f"{email} no longer has {where}, nor an invitation to it.")
    else:
        out.print(f"{where} is shared with no one now; its files stay yours.")


def shares(as_json: JsonOption = False) -> None:
    """List the shared folders you own or were given, and the invitations waiting for you."""
    with friendly_errors(), _server() as (api, _settings):
        answer = api.call("/v1/shares", {})
        entries, waiting = answer["shares"], invitations.well_formed(answer)

        def render() -> None:
            table = Table("folder", "your access", "owner", "members", box=None)
            for s in entries:
                members = [f"{m['email']} ({m['access']})" for m in s.get("members", [])]
                members += [f"{m['email']} (invited)" for m in s.get("invited", [])]
                table.add_row(
                    s["path_display"], s["access"], s.get("owner_email", ""), ", ".join(members)
                )
            out.print(table if entries else "No shared folders.")
            if waiting:
                # Text, not markup: every field is the server's (a name holding "[red]")
                invited = Table("invited to", "number", "as", "by", "since", box=None)
                for i in waiting:
                    shown = (i["name"], i["ns_id"], i.get("access"), i.get("owner_email"))
                    invited.add_row(
                        *(Text(printable(str(v))) for v in shown), _when(i.get("invited_at"))
                    )
                out.print(invited)
                out.print("Answer one with `tessera accept NAME` or `tessera decline NAME`.")

        _emit({"shares": entries, "invitations": waiting}, as_json, render)


InvitationArgument = Annotated[
    str, typer.Argument(help="The invitation: its folder's name, or its number (`shares`).")
]


def accept(invitation: InvitationArgument) -> None:
    """Accept an invitation to a shared folder: it syncs to your devices from then on."""
    with friendly_errors(), _server() as (api, _settings):
        chosen = _invitation(api, invitation)
        entry = api.call("/v1/shares/accept", {"ns_id": chosen["ns_id"]})
    name, owner = printable(entry["name"]), printable(entry["owner_email"])
    out.print(
        Text(
            f"Joined {name} of {owner} as {entry['access']}, at"
            f" {printable(entry['path_display'])}: it reaches your devices at their next sync."
        )
    )


def decline(
    invitation: Annotated[
        str | None,
        typer.Argument(help="The invitation: its folder's name, or its number (`shares`)."),
    ] = None,
    from_email: Annotated[
        str | None, typer.Option("--from", help="Decline every invitation from this owner.")
    ] = None,
) -> None:
    """Decline an invitation to a shared folder, or every one from someone (--from)."""
    with friendly_errors():
        if invitation is not None and from_email is not None:
            raise UserError("name one invitation, or give --from EMAIL, not both")
        if invitation is None and from_email is None:
            raise UserError("name the invitation to decline, or give --from EMAIL")
        with _server() as (api, _settings):
            if from_email is not None:
                _check_email(from_email)
                request: dict[str, Any] = {"from_email": from_email}
            else:
                request = {"ns_id": _invitation(api, invitation or "")["ns_id"]}
            answer = api.call("/v1/shares/decline", request)
        for i in invitations.well_formed(answer):
            who = printable(str(i.get("owner_email", "?")))
            out.print(Text(f"Declined {printable(i['name'])} of {who}."))


def _invitation(api: Api, wanted: str) -> Mapping[str, Any]:
    """The waiting invitation `wanted` names (`invitations.choose`), or a clear refusal."""
    waiting = invitations.well_formed(api.call("/v1/shares/invitations", {}))
    try:
        return invitations.choose(waiting, wanted)
    except invitations.InvitationNotFound as e:
        raise UserError(str(e)) from None


def conflicts(as_json: JsonOption = False) -> None:
    """List conflicted copies (and local-only copies of edits to read-only shares)."""
    with friendly_errors():
        _conflicts(as_json)


def _conflicts(as_json: bool) -> None:
    home = _home()
    rows: list[dict[str, Any]] = []
    if home.state_file.exists():
        state = StateDB(home.state_file)
        try:
            rows = [
                {
                    "path": c.path,
                    "original": c.original,
                    "reason": c.reason,
                    "local_only": c.local_only,
                    "created_at": c.created_at,
                }
                for c in state.conflicts()
            ]
        finally:
            state.close()

    def render() -> None:
        if not rows:
            out.print("No conflicts.")
            return
        table = Table("copy", "of", "why", "where", box=None)
        for r in rows:
            table.add_row(
                r["path"],
                r["original"],
                r["reason"],
                "this device only" if r["local_only"] else "synced",
            )
        out.print(table)

    _emit(rows, as_json, render)


def register(app: typer.Typer) -> None:
    """Add the user commands to the `tessera` app."""
    for fn in (
        login,
        logout,
        account,
        sync,
        status,
        ls,
        history,
        get,
        restore,
        rm,
        trash,
        undelete,
        share,
        unshare,
        shares,
        accept,
        decline,
        conflicts,
    ):
        app.command(fn.__name__)(fn)
