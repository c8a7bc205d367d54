"""The `tessera` user commands: clear one-line errors (no tracebacks), JSON listings, paths."""

from __future__ import annotations

import inspect
import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from tessera_client.cli import app
from tessera_client.commands import UserError, _server_path
from tessera_client.config import Home, Settings, Tokens
from tessera_client.state import StateDB

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    monkeypatch.setenv("TESSERA_HOME", str(tmp_path / "home"))
    return Home(tmp_path / "home")


def test_commands_without_login_fail_with_a_hint(home: Home) -> None:
    for args in (["ls"], ["history", "a.txt"], ["trash"], ["shares"], ["rm", "x"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 1, (args, r.output)
        assert "tessera login" in r.output
        assert "Traceback" not in r.output


def test_unreachable_server_is_one_clear_line(home: Home, tmp_path: Path) -> None:
    home.save_settings(Settings(server_url="http://127.0.0.1:9", retry_attempts=1))
    home.save_tokens(Tokens(refresh_token="r", access_token="a", expires_at=2e9))
    r = runner.invoke(app, ["ls"])
    assert r.exit_code == 1
    said = " ".join(r.output.split())
    assert "cannot reach http://127.0.0.1:9:" in said and "Traceback" not in said
    # (mid-sync too, where the URL was right: that nothing was lost comes first)
    assert "Nothing was lost: run the command again once the server is back" in said


def _login_to(handler: type[BaseHTTPRequestHandler], scheme: str) -> tuple[str, Result]:
    """`tessera login` to a plain HTTP server answering with `handler`, by `scheme`: the
    URL, and what the command did."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"{scheme}://127.0.0.1:{httpd.server_port}"
        r = runner.invoke(app, ["login", "--server", url, "--email", "a@b.c", "--password", "p"])
    finally:
        httpd.shutdown()
        httpd.server_close()
    return url, r


def test_https_to_a_plain_http_server_says_to_use_http(home: Home) -> None:
    _, r = _login_to(BaseHTTPRequestHandler, "https")
    assert r.exit_code == 1
    assert "The server speaks plain HTTP: log in with its http:// URL" in " ".join(r.output.split())


@pytest.mark.parametrize(
    "url", ["127.0.0.1:8790", "ftp://host", "http://", "http://127.0.0.1:8790 x", "localhost"]
)
def test_login_refuses_what_is_not_a_server_url_at_once(home: Home, url: str) -> None:
    """An address without its scheme waited out every retry, then printed httpx's words."""
    args = ["login", "--server", url, "--email", "a@b.c", "--password", "p"]
    r = runner.invoke(app, args)
    assert r.exit_code == 1
    assert "is not a server URL: give it as http://HOST:PORT" in " ".join(r.output.split())


@pytest.mark.parametrize("args", [["share", "Team", "bob"], ["unshare", "Team", "bob at x"]])
def test_what_is_no_email_address_is_refused_in_words(home: Home, args: list[str]) -> None:
    """The server's validator answered: "email: String should match pattern ..."."""
    home.save_settings(Settings(server_url="http://127.0.0.1:9", retry_attempts=1))
    home.save_tokens(Tokens(refresh_token="r", access_token="a", expires_at=2e9))
    r = runner.invoke(app, args)
    assert r.exit_code == 1
    assert f"error: {args[2]!r} is not an email address" in r.output


def test_login_to_something_that_is_not_tessera_says_so(home: Home) -> None:
    """A web server's 404 page read "Not Found — check the path (`tessera ls`)", a proxy's
    403 "wrong email or password"."""

    class NotTessera(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(404 if self.path.startswith("/v1/") else 403)
            self.send_header("Content-Length", "9")
            self.end_headers()
            self.wfile.write(b"<html/>\n\n")

        def log_message(self, *args: object) -> None:
            pass

    url, r = _login_to(NotTessera, "http")
    assert r.exit_code == 1
    assert f"no Tessera server answers at {url} (404" in " ".join(r.output.split())
    assert home.load_tokens() is None


@pytest.mark.parametrize(
    ("status", "message", "hint"),
    [
        (404, "nothing at '/a.txt'", "check the path (`tessera ls`)"),
        (404, "no rev 9 of this file", "`tessera history PATH`"),
        (404, "no file with id 'id:x'", "`tessera trash`"),
        (404, "no user with email 'b@c.d' (they must sign in once first)", None),
        (404, "'b@c.d' is not a member of this shared folder", None),
    ],
)
def test_a_404_says_what_to_do_about_what_was_not_found(
    capsys: pytest.CaptureFixture[str], status: int, message: str, hint: str | None
) -> None:
    """A hint about paths ("check the path") had followed every 404: an email, a rev, an id."""
    from tessera_client.api import ApiError
    from tessera_client.commands import friendly_errors

    with pytest.raises(typer.Exit), friendly_errors():
        raise ApiError(status, "not_found", message, {})
    printed = " ".join(capsys.readouterr().err.split())
    assert message in printed
    if hint is None:
        assert " — " not in printed
    else:
        assert printed.endswith(hint)


def test_status_and_conflicts_json(home: Home, tmp_path: Path) -> None:
    home.save_settings(Settings(server_url="http://x", email="me@x", device_name="lap"))
    home.ensure()
    db = StateDB(home.state_file)
    db.add_conflict("a (lap's conflicted copy 2026-11-26).txt", "a.txt", "edited", local_only=True)
    db.set_meta("paused_deletes", "60")
    db.close()
    status = json.loads(runner.invoke(app, ["status", "--json"]).output)
    assert status["device"] == "lap" and status["logged_in"] is False
    assert status["conflicts"] == 1 and status["paused_deletes"] == 60
    rows = json.loads(runner.invoke(app, ["conflicts", "--json"]).output)
    assert rows[0]["original"] == "a.txt" and rows[0]["local_only"] is True


@pytest.mark.parametrize(
    ("damaged", "content", "says"),
    [
        ("config.json", b"{not json", "fix it or delete it"),
        ("config.json", b"[1, 2]", "not a JSON object"),
        ("tokens.json", b'{"refresh": 1}', "run `tessera login`"),
        ("state.db", b"this is not an SQLite file" * 100, "compares the folder and the server"),
    ],
)
def test_a_damaged_home_file_is_one_clear_line(
    home: Home, damaged: str, content: bytes, says: str
) -> None:
    """A damaged config, tokens file or state database raised a traceback out of every
    command that read it (`status` and `conflicts` had no error handling at all)."""
    home.save_settings(Settings(server_url="http://127.0.0.1:9", retry_attempts=1))
    home.save_tokens(Tokens(refresh_token="r", access_token="a", expires_at=2e9))
    (home.path / damaged).write_bytes(content)
    readers = [["status"], ["conflicts"]] if damaged == "state.db" else [["status"], ["ls"]]
    for args in readers:
        r = runner.invoke(app, args)
        assert r.exit_code == 1, (args, r.output)
        assert says in " ".join(r.output.split()) and "Traceback" not in r.output, r.output


@pytest.mark.parametrize(("code", "damaged"), [(None, False), (5, False), (11, True), (779, True)])
def test_a_busy_state_database_is_not_called_damaged(
    home: Home, monkeypatch: pytest.MonkeyPatch, code: int | None, damaged: bool
) -> None:
    """Locked (5), read-only or failing I/O is passing: moving the state aside, the cure for
    a damaged one (SQLITE_CORRUPT 11, and its extended codes: 779 a damaged index), would
    lose the synced base (files deleted since would come back)."""
    home.ensure()
    StateDB(home.state_file).close()

    def failing(*args: object, **kwargs: object) -> None:
        error = sqlite3.OperationalError("database is locked" if not damaged else "malformed")
        if code is not None:
            error.sqlite_errorcode = code
        raise error

    monkeypatch.setattr("tessera_client.commands.StateDB", failing)
    r = runner.invoke(app, ["status"])
    said = " ".join(r.output.split())
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert ("aside" in said) is damaged and ("try again" in said) is not damaged, said


def test_logout_of_damaged_tokens_forgets_them(home: Home) -> None:
    """Logging out is the cure for damaged tokens, and it failed on them."""
    home.save_settings(Settings(server_url="http://127.0.0.1:9", retry_attempts=1))
    home.ensure()
    (home.path / "tokens.json").write_text("{not json")
    r = runner.invoke(app, ["logout"])
    assert r.exit_code == 0 and "Logged out on this device" in r.output, r.output
    assert not (home.path / "tokens.json").exists()


def test_sync_once_shows_the_bars_of_large_files(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the daemon drew them: a first `--once` of gigabytes printed nothing until its
    first file was done. (Not with --quiet.)"""
    from contextlib import contextmanager

    from tessera_client import commands
    from tessera_client.engine import SyncEngine
    from tessera_client.reporting import RoundResult

    home.save_settings(Settings(server_url="http://127.0.0.1:9"))
    home.save_tokens(Tokens(refresh_token="r", access_token="a", expires_at=2e9))
    shown: list[bool] = []
    live = False

    @contextmanager
    def recording(_reporter: object) -> Iterator[None]:
        nonlocal live
        live = True
        yield
        live = False

    def run_once(self: SyncEngine) -> RoundResult:
        shown.append(live)
        return RoundResult()

    monkeypatch.setattr(commands, "_live", recording)
    monkeypatch.setattr(SyncEngine, "run_once", run_once)
    for extra, expected in (([], True), (["--quiet"], False)):
        r = runner.invoke(app, ["sync", str(tmp_path / "folder"), "--once", *extra])
        assert r.exit_code == 0, r.output
        assert shown.pop() is expected


def test_ctrl_c_in_a_request_says_it_may_have_been_carried_out(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in `rm` had said "what was on its way resumes at the next run": nothing
    resumes a request, which may have been carried out, its answer lost."""
    from tessera_client.api import Api

    home.save_settings(Settings(server_url="http://127.0.0.1:9"))
    home.save_tokens(Tokens(refresh_token="r", access_token="a", expires_at=2e9))

    def interrupted(self: Api, *args: object, **kwargs: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(Api, "call", interrupted)
    r = runner.invoke(app, ["rm", "notes.txt"])
    assert r.exit_code == 130
    said = " ".join(r.output.split())
    assert "may have been carried out" in said and "resumes" not in said


def test_sync_refuses_a_home_inside_the_folder(home: Home, tmp_path: Path) -> None:
    home.save_settings(Settings(server_url="http://x"))
    r = runner.invoke(app, ["sync", str(tmp_path), "--once"])
    assert r.exit_code == 1 and "must not be inside" in " ".join(r.output.split())


def test_paths_relative_or_absolute_inside_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "Sync"
    (folder / "Docs").mkdir(parents=True)
    settings = Settings(folder=str(folder))
    monkeypatch.chdir(tmp_path)
    assert _server_path("Docs/a.txt", settings) == "/Docs/a.txt"
    assert _server_path(str(folder / "Docs" / "a.txt"), settings) == "/Docs/a.txt"
    assert _server_path("", settings) == ""
    monkeypatch.chdir(folder / "Docs")
    assert _server_path("a.txt", settings) == "/Docs/a.txt"
    assert _server_path("../b.txt", settings) == "/b.txt"
    with pytest.raises(UserError):
        _server_path("../../outside.txt", settings)
    with pytest.raises(UserError):
        _server_path("/etc/passwd", settings)


_MODULES_AFTER = """
import sys
sys.argv = ["tessera", *sys.argv[1:]]
from tessera_client.cli import main
try:
    main()
except SystemExit:
    pass
print("psycopg-loaded" if "psycopg" in sys.modules else "psycopg-absent")
"""


@pytest.mark.parametrize(
    ("args", "mounted"),
    [(["--help"], True), (["admin", "--help"], True), (["status", "--help"], False)],
)
def test_operator_groups_load_only_when_reachable(args: list[str], mounted: bool) -> None:
    """User commands must not pay for the server's imports; help and the groups still work."""
    r = subprocess.run(
        [sys.executable, "-c", _MODULES_AFTER, *args], capture_output=True, text=True, check=True
    )
    assert r.stdout.strip().endswith("psycopg-loaded" if mounted else "psycopg-absent")
    if args == ["--help"]:
        assert "admin" in r.stdout and "local" in r.stdout
    if args[0] == "admin":
        assert "Run maintenance workflows now" in r.stdout


_EXIT_HOOKS = """
import atexit, gc, sys
sys.argv = ["tessera", "status", "--help"]
from tessera_client.cli import main
try:
    main()
except SystemExit:
    pass
atexit._run_exitfuncs()
print("frozen", gc.get_freeze_count())
"""


def test_the_command_freezes_what_it_made_before_the_interpreter_exits() -> None:
    """The interpreter's last collections would walk every imported object (150-240 ms of
    every command's exit); frozen, they are skipped."""
    r = subprocess.run(
        [sys.executable, "-c", _EXIT_HOOKS], capture_output=True, text=True, check=True
    )
    assert int(r.stdout.split("frozen")[-1]) > 10_000, r.stdout


# Legal names that rich would read as markup: printed with markup, the first lost "[draft]"
# and "[b]", and the second (a folder "notes[" holding "]x.txt") raised MarkupError.
MARKUP_NAME = "[draft] plan [b]x.txt"
MARKUP_PATH = "notes[/]x.txt"


def test_names_that_look_like_markup_are_printed_as_they_are(
    home: Home, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tables, events, problems and progress bars print names exactly, and never raise."""
    from tessera_client.commands import ConsoleReporter

    home.save_settings(Settings(server_url="http://x", email="me@x", device_name="lap"))
    home.ensure()
    db = StateDB(home.state_file)
    db.add_conflict(MARKUP_NAME, MARKUP_PATH, "edited", local_only=True)
    db.close()
    listed = runner.invoke(app, ["conflicts"])
    assert listed.exit_code == 0
    assert MARKUP_NAME in listed.output and MARKUP_PATH in listed.output
    reporter = ConsoleReporter()
    for name in (MARKUP_NAME, MARKUP_PATH):
        reporter.event(f"uploaded {name}")
        reporter.problem(f"cannot read {name}")
        reporter.transfer(name, 1, 2)
        reporter.progress.refresh()
        reporter.transfer(name, 2, 2)
    printed = capsys.readouterr().err
    for name in (MARKUP_NAME, MARKUP_PATH):
        assert f"uploaded {name}" in printed and f"cannot read {name}" in printed


def test_blocks_prints_a_markup_like_file_name(tmp_path: Path) -> None:
    target = tmp_path / MARKUP_NAME
    target.write_bytes(b"some bytes")
    r = runner.invoke(app, ["blocks", str(target)])
    assert r.exit_code == 0, r.output
    assert MARKUP_NAME in " ".join(r.output.split())


def test_a_server_message_is_printed_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    import typer

    from tessera_client.api import ApiError
    from tessera_client.commands import friendly_errors

    with pytest.raises(typer.Exit), friendly_errors():
        raise ApiError(409, "conflict", f"'/{MARKUP_PATH}' is at rev 3, not 2", {})
    printed = " ".join(capsys.readouterr().err.split())
    assert f"error: '/{MARKUP_PATH}' is at rev 3, not 2" in printed


@pytest.mark.parametrize(
    ("details", "hinted"), [({}, True), ({"reason": "under_a_shared_folder"}, False)]
)
def test_a_409_that_says_what_to_do_gets_no_hint_of_a_race(
    capsys: pytest.CaptureFixture[str], details: dict[str, str], hinted: bool
) -> None:
    """A 409 is a race as a rule ("sync and try again"); one with a reason says what to do
    itself, and the hint contradicted it (an undelete under a shared folder)."""
    import typer

    from tessera_client.api import ApiError
    from tessera_client.commands import friendly_errors

    with pytest.raises(typer.Exit), friendly_errors():
        raise ApiError(
            409, "conflict", "it can go back once that folder is no longer shared", details
        )
    printed = " ".join(capsys.readouterr().err.split())
    assert ("sync and try again" in printed) == hinted


def _summaries(group: typer.Typer, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(command line, summary) of every command of `group`, its sub-groups' too."""
    for cmd in group.registered_commands:
        assert cmd.callback is not None
        name = cmd.name or cmd.callback.__name__
        yield prefix + name, (inspect.getdoc(cmd.callback) or "").split("\n\n")[0]
    for sub in group.registered_groups:
        assert sub.typer_instance is not None and sub.name is not None
        yield from _summaries(sub.typer_instance, f"{prefix}{sub.name} ")


def test_each_command_is_summed_up_in_one_paragraph_the_terminal_wraps() -> None:
    """The help prints a summary's line breaks as they are: `get`'s broke mid-sentence."""
    from tessera.local.cli import app as local_app
    from tessera.maintenance.cli import app as admin_app

    found = dict(_summaries(app))
    found |= dict(_summaries(local_app, "local ")) | dict(_summaries(admin_app, "admin "))
    assert {"get", "sync", "local up", "admin run"} <= found.keys()
    assert {line: s for line, s in found.items() if "\n" in s or not s} == {}
