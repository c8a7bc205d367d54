"""The whole local cloud over real HTTP: in-process (`LocalCloud`) and as a subprocess
(`python -m tessera.local up`), with real PostgreSQL, real files and the real API."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import psycopg
import pytest

from tessera.adapters.local import JwtIssuer, LocalIdentity, LocalUsers
from tessera.adapters.local.key_file import KeyFileKeyService
from tessera.blocks import block_id, content_hash, decode_block, encode_block
from tessera.domain.errors import Conflict, Unauthorized, Unprocessable
from tessera.domain.models import MAX_CURSOR_CHARS
from tessera.domain.object_keys import CANONICAL_PREFIX, NONCURRENT_RETENTION_DAYS
from tessera.local import LocalCloud
from tessera.local.cloud import MissingKeyFile
from tessera.settings import Settings

PASSWORD = "local cloud password"
BLOCK = 64 * 1024


class Client:
    """Just enough of a sync client to upload, commit, list, long-poll and download."""

    def __init__(self, base_url: str, email: str, password: str = PASSWORD) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30)
        r = self.http.post("/v1/auth/token", json={"email": email, "password": password})
        assert r.status_code == 200, r.text
        self.http.headers["Authorization"] = f"Bearer {r.json()['access_token']}"

    def post(self, path: str, body: dict[str, Any]) -> Any:
        r = self.http.post(path, json=body)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()

    def put_file(self, path: str, data: bytes) -> dict[str, Any]:
        chunks = [data[i : i + BLOCK] for i in range(0, len(data), BLOCK)]
        ids = [block_id(c) for c in chunks]
        blocks = [{"id": i, "size": len(c)} for i, c in zip(ids, chunks, strict=True)]
        spec = {"path": path, "size": len(data), "content_hash": content_hash(ids)}
        started = self.post("/v1/uploads", {"files": [{**spec, "blocks": blocks}]})
        by_id = dict(zip(ids, chunks, strict=True))
        encoded = {
            n["id"]: encode_block(
                by_id[n["id"]], n["id"], base64.b64decode(n["key"]), n["key_version"]
            )
            for n in started["needed"]
        }
        urls = self.post(
            "/v1/uploads/urls",
            {
                "upload_id": started["upload_id"],
                "blocks": [
                    {
                        "id": i,
                        "size": len(e),
                        "sha256": base64.b64encode(hashlib.sha256(e).digest()).decode(),
                    }
                    for i, e in encoded.items()
                ],
            },
        )["urls"]
        for u in urls:
            r = httpx.put(u["url"], content=bytes(encoded[u["id"]]), headers=u["headers"])
            assert r.status_code == 200, r.text
        return self.post(  # type: ignore[no-any-return]
            "/v1/commit",
            {**spec, "blocks": blocks, "parent_rev": None, "upload_id": started["upload_id"]},
        )

    def get_file(self, path: str) -> bytes:
        result = self.post("/v1/download", {"path": path})
        out = bytearray()
        for b in result["blocks"]:
            stored = httpx.get(b["url"], headers=b["headers"])
            assert stored.status_code == 200, stored.text
            out += decode_block(stored.content, b["id"], base64.b64decode(b["key"]))
        return bytes(out)


# ---------------------------------------------------------------------------------------
# In-process


@pytest.fixture
def cloud(tmp_path: Path, database_url: str) -> Iterator[tuple[str, str]]:
    """A LocalCloud on a fresh migrated database; (base_url, a user's email)."""
    settings = Settings(database_url=database_url, longpoll_min_s=0.0, longpoll_max_s=30.0)
    # with the maintenance scheduler on, as `local up` runs it: dedup may settle staged
    # copies mid-test, and URLs issued before must keep working
    cloud = LocalCloud(tmp_path / "state", port=0, settings=settings)
    with cloud as base_url:
        email = f"u{uuid.uuid4().hex[:8]}@example.com"
        LocalUsers(database_url).add(email, PASSWORD)
        yield base_url, email


def _a_cloud_that_stored_a_file(tmp_path: Path, settings: Settings) -> tuple[Path, str]:
    """A local cloud's state dir (stopped) in which a user stored `/kept.bin`: (the state
    dir, the user's email)."""
    state = tmp_path / "state"
    with LocalCloud(state, port=0, settings=settings, maintenance=False) as base_url:
        email = f"u{uuid.uuid4().hex[:8]}@example.com"
        LocalUsers(settings.database_url).add(email, PASSWORD)
        Client(base_url, email).put_file("/kept.bin", os.urandom(BLOCK + 1))
    return state, email


def test_a_lost_key_file_is_not_made_anew_over_stored_blocks(
    tmp_path: Path, database_url: str
) -> None:
    """A missing `keys.json` was made anew at start: every block became unreadable, and
    maintenance quarantined them all, for good (the old file put back did not undo it)."""
    settings = Settings(database_url=database_url)
    state, email = _a_cloud_that_stored_a_file(tmp_path, settings)
    key_file = state / "keys.json"
    key_file.rename(tmp_path / "keys.json.bak")
    with pytest.raises(MissingKeyFile, match="holds 2 blocks encrypted under it") as refused:
        LocalCloud(state, port=0, settings=settings, maintenance=False).prepare()
    # its blocks are in the DATABASE_URL's database: a new state dir would not help
    assert "unset DATABASE_URL" in str(refused.value)
    assert not key_file.exists()
    (tmp_path / "keys.json.bak").rename(key_file)  # put back: it starts, as before
    with LocalCloud(state, port=0, settings=settings, maintenance=False) as base_url:
        assert Client(base_url, email).get_file("/kept.bin")


def test_a_key_file_from_another_state_dir_is_refused(tmp_path: Path, database_url: str) -> None:
    """A `keys.json` copied from another state dir (or two state dirs over one
    DATABASE_URL) started: every block failed authentication, and maintenance quarantined
    each, for good. Its secrets are now compared with the fingerprints recorded at the
    first start, and `local up` refuses, with one line, before anything is served."""
    settings = Settings(database_url=database_url)
    state, email = _a_cloud_that_stored_a_file(tmp_path, settings)
    key_file = state / "keys.json"
    key_file.rename(tmp_path / "keys.json.bak")
    KeyFileKeyService(key_file)  # another state dir's key file: another secret, version 1
    cmd = [sys.executable, "-m", "tessera.local", "up", "--state", str(state), "--port", "0"]
    env = {**os.environ, "DATABASE_URL": database_url}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    said = " ".join(r.stderr.split())
    assert "key version 1's secret is not the one recorded on" in said
    assert "Put back the key file" in said
    (tmp_path / "keys.json.bak").replace(key_file)  # the right one back: it starts
    with LocalCloud(state, port=0, settings=settings, maintenance=False) as base_url:
        assert len(Client(base_url, email).get_file("/kept.bin")) == BLOCK + 1


def test_upload_commit_list_download_through_the_gateway(cloud: tuple[str, str]) -> None:
    base_url, email = cloud
    client = Client(base_url, email)
    data = os.urandom(3 * BLOCK + 100)
    entry = client.put_file("/Docs/report.bin", data)
    assert (entry["rev"], entry["size"]) == (1, len(data))
    listing = client.post("/v1/list_folder", {"path": "/Docs"})
    assert [e["name"] for e in listing["entries"]] == ["report.bin"]
    assert client.get_file("/docs/REPORT.bin") == data
    assert client.http.get("/v1/health").status_code == 200
    assert httpx.get(base_url + "/v1/openapi.json").json()["openapi"].startswith("3.")


def test_longpoll_wakes_on_a_commit_and_times_out_without_one(cloud: tuple[str, str]) -> None:
    base_url, email = cloud
    client = Client(base_url, email)
    client.put_file("/a.txt", b"first")
    cursor = client.post("/v1/list_folder", {"path": ""})["cursor"]
    started = time.monotonic()
    assert client.post("/v1/list_folder/longpoll", {"cursor": cursor, "timeout": 1}) == {
        "changes": False,
        "backoff": None,
    }
    assert time.monotonic() - started >= 0.9

    answers: list[Any] = []
    poller = threading.Thread(
        target=lambda: answers.append(
            client.post("/v1/list_folder/longpoll", {"cursor": cursor, "timeout": 25})
        )
    )
    poller.start()
    time.sleep(0.5)
    committed = time.monotonic()
    Client(base_url, email).put_file("/b.txt", b"second")
    poller.join(20)
    assert answers and answers[0]["changes"] is True
    assert time.monotonic() - committed < 5
    changes = client.post("/v1/list_folder/continue", {"cursor": cursor})
    assert [e["name"] for e in changes["entries"]] == ["b.txt"]


def test_longpoll_bad_requests(cloud: tuple[str, str]) -> None:
    base_url, email = cloud
    client = Client(base_url, email)
    r = client.http.post("/v1/list_folder/longpoll", json={"cursor": "forged", "timeout": 1})
    assert r.status_code == 400
    r = client.http.post("/v1/list_folder/longpoll", json={"timeout": "soon"})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "invalid"
    r = httpx.post(base_url + "/v1/list_folder/longpoll", json={"cursor": "x"})
    assert r.status_code == 401
    for body in (b"[" * 50_000, b"\xff"):  # nested too deep, not UTF-8
        r = client.http.post("/v1/list_folder/longpoll", content=body)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "invalid"
    # POST alone, as on AWS: a GET (or PUT) with a body waited the long-poll out here
    cursor = client.post("/v1/list_folder", {"path": ""})["cursor"]
    waiting = json.dumps({"cursor": cursor, "timeout": 30})
    for method in ("GET", "PUT", "DELETE"):
        r = client.http.request(method, "/v1/list_folder/longpoll", content=waiting, timeout=10)
        assert r.status_code == 404, (method, r.text)
        assert "the long-poll is POST" in r.json()["error"]["message"]


def test_a_longest_cursor_reaches_the_longpoll(cloud: tuple[str, str]) -> None:
    """A cursor may be as long as the API allows (a user given a thousand shared folders):
    the long-poll's body limit took 128 KiB, and refused every long-poll of such a user."""
    base_url, email = cloud
    client = Client(base_url, email)
    body = {"cursor": "x" * MAX_CURSOR_CHARS, "timeout": 1}
    r = client.http.post("/v1/list_folder/longpoll", json=body)
    assert r.status_code == 400, r.text  # read and checked: not this server's cursor


def test_another_users_cursor_is_refused(cloud: tuple[str, str], database_url: str) -> None:
    base_url, email = cloud
    other = f"o{uuid.uuid4().hex[:8]}@example.com"
    LocalUsers(database_url).add(other, PASSWORD)
    mine = Client(base_url, email)
    mine.put_file("/mine.txt", b"mine")
    cursor = mine.post("/v1/list_folder", {"path": ""})["cursor"]
    theirs = Client(base_url, other)
    theirs.put_file("/theirs.txt", b"theirs")
    r = theirs.http.post("/v1/list_folder/longpoll", json={"cursor": cursor, "timeout": 1})
    assert r.status_code == 400


def test_local_users(database_url: str) -> None:
    users = LocalUsers(database_url)
    created = users.add("  Carol@Example.COM ", PASSWORD)
    assert created.email == "carol@example.com"
    hasher = mock.Mock(wraps=users._hasher)
    with pytest.raises(Conflict), mock.patch.object(users, "_hasher", hasher):
        users.add("CAROL@example.com", "another password")
    hasher.hash.assert_not_called()  # the demo user is added at each start: no argon2 for it
    with pytest.raises(Unprocessable):
        users.add("dave@example.com", "short")
    for bad in ("", "no-at-sign", "@example.com", "a b@example.com"):
        with pytest.raises(Unprocessable):
            users.add(bad, PASSWORD)
    assert users.authenticate("carol@EXAMPLE.com", PASSWORD).principal == created
    with pytest.raises(Unauthorized):
        users.authenticate("carol@example.com", "another password")
    with psycopg.connect(database_url) as conn:
        (stored,) = conn.execute("SELECT password_hash FROM local_users").fetchone() or ("",)
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored


def test_a_password_reset_signs_out_the_sessions_before_it_and_none_after(
    database_url: str, tmp_path: Path
) -> None:
    """The reset was a time to the microsecond and a token's `iat` whole seconds: a
    sign-in in the second after a reset was signed out at its first refresh, an hour on."""
    users, issuer = LocalUsers(database_url), JwtIssuer(tmp_path / "jwt.pem")
    identity = LocalIdentity(users, issuer)
    users.add("erin@example.com", PASSWORD)
    credentials = {"email": "erin@example.com", "password": PASSWORD}
    before = identity.token(credentials).refresh_token
    users.reset_password("erin@example.com", PASSWORD)
    after = identity.token(credentials).refresh_token  # at once, in the same second
    assert identity.token({"refresh_token": after}).refresh_token == after
    with pytest.raises(Unauthorized, match="password was changed"):
        identity.token({"refresh_token": before})


# ---------------------------------------------------------------------------------------
# As a subprocess, with embedded PostgreSQL under the state dir


def _up(state: Path) -> tuple[subprocess.Popen[str], str, str]:
    """Start `local up --demo`; (process, base URL, everything it printed while starting)."""
    env = {**os.environ, "TESSERA_LONGPOLL_MIN_S": "0"}
    env.pop("DATABASE_URL", None)
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "tessera.local", "up",
            "--state", str(state), "--port", "0", "--demo",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and (line := proc.stdout.readline()):
        seen.append(line)
        if line.startswith("Press Ctrl-C"):
            printed = "".join(seen)
            m = re.search(r"Tessera local cloud: (http://\S+)", printed)
            assert m, printed
            return proc, m.group(1), printed
    proc.kill()
    pytest.fail("local up did not start:\n" + "".join(seen))


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()  # a failed test must not leave the server (and its PostgreSQL) running
        out, _ = proc.communicate()
        pytest.fail("local up did not stop on SIGTERM:\n" + out)
    assert proc.returncode == 0, out
    return out


def test_local_up_subprocess_stops_cleanly_and_restarts_with_everything(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc, url, printed = _up(state)
    assert f"tessera login --server {url} --email demo@tessera.local --password" in printed
    assert "Metadata database" not in printed  # the embedded one: nothing to warn of
    assert "tessera sync ~/Tessera" in printed
    try:
        assert httpx.get(url + "/v1/health").json()["status"] == "ok"
        demo_email, demo_password = (state / "demo-credentials").read_text().split()
        Client(url, demo_email, demo_password)
        added = subprocess.run(
            [
                sys.executable,
                "-m",
                "tessera.local",
                "adduser",
                "Bob@Example.com",
                "--password",
                PASSWORD,
                "--state",
                str(state),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert added.returncode == 0, added.stdout + added.stderr
        bob = Client(url, "bob@example.com")
        data = os.urandom(2 * BLOCK + 7)
        bob.put_file("/kept.bin", data)
    finally:
        out = _stop(proc)
    assert "stopped" in out
    assert not (state / "pg" / "postmaster.pid").exists(), "PostgreSQL was not stopped"

    proc, url, printed = _up(state)
    try:
        assert Client(url, "bob@example.com").get_file("/kept.bin") == data
    finally:
        _stop(proc)
    assert demo_password in printed  # --demo prints the same login on every start


def test_local_up_fails_clearly(tmp_path: Path, database_url: str) -> None:
    """A taken port or a key file others can read: exit 1 with a one-line reason."""
    env = {**os.environ, "DATABASE_URL": database_url}
    state = tmp_path / "state"

    def up(port: int) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "tessera.local", "up", "--state", str(state)]
        return subprocess.run(
            [*cmd, "--port", str(port)], capture_output=True, text=True, env=env, timeout=60
        )

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        r = up(taken.getsockname()[1])
    assert r.returncode == 1
    assert "cannot listen on 127.0.0.1" in r.stderr
    assert "--port 0" in " ".join(r.stderr.split())  # what to do about it
    assert "Traceback" not in r.stderr

    (state / "keys.json").chmod(0o644)  # created by the first attempt
    r = up(0)
    assert r.returncode == 1
    assert "keys.json has mode 0644" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_banner_names_a_database_from_the_environment_without_its_password() -> None:
    """DATABASE_URL is a name many shells export for something else: `local up` used it
    without a word, migrating Tessera's tables into that database."""
    from tessera.local.postgres import describe_database

    said = describe_database("postgresql://app:s3cret@db.example:6543/myapp")
    assert said == "db.example:6543/myapp" and "s3cret" not in said


def test_adduser_finds_no_cloud_where_none_runs(tmp_path: Path) -> None:
    """The default state dir is relative: run elsewhere, `adduser` made a new, empty cloud
    there (a 46 MB database) and added the user to it, one the running cloud never saw."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    cmd = [sys.executable, "-m", "tessera.local", "adduser", "carol@example.com"]
    r = subprocess.run(
        [*cmd, "--password", PASSWORD, "--state", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 1 and "no local cloud at" in r.stderr, r.stderr
    assert not (tmp_path / "nowhere").exists()


def test_passwd_sets_a_new_password_and_signs_every_device_out(
    tmp_path: Path, database_url: str
) -> None:
    """A lost password (the demo user's credentials file gone) had no way back, and one
    that leaked kept every device signed in for 30 days. `tessera local passwd` sets a
    new one and ends the sessions begun before it."""
    settings = Settings(database_url=database_url)
    state, email = _a_cloud_that_stored_a_file(tmp_path, settings)
    with LocalCloud(state, port=0, settings=settings, maintenance=False) as base_url:
        token = f"{base_url}/v1/auth/token"
        signed_in = httpx.post(token, json={"email": email, "password": PASSWORD}).json()
        env = {**os.environ, "DATABASE_URL": database_url}
        cmd = [sys.executable, "-m", "tessera.local", "passwd", email.upper()]
        r = subprocess.run(
            [*cmd, "--password", "a new passphrase", "--state", str(state)],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0 and "set a new password" in r.stdout, r.stderr
        old = httpx.post(token, json={"refresh_token": signed_in["refresh_token"]})
        assert old.status_code == 401 and "password was changed" in old.text
        assert httpx.post(token, json={"email": email, "password": PASSWORD}).status_code == 401
        assert Client(base_url, email, "a new passphrase").get_file("/kept.bin")
    r = subprocess.run(
        [*cmd[:-1], "nobody@example.com", "--password", "x" * 12, "--state", str(state)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert r.returncode == 1 and "no user with email nobody@example.com" in r.stderr


def test_public_url_is_where_block_urls_point(tmp_path: Path, database_url: str) -> None:
    cloud = LocalCloud(
        tmp_path / "state",
        port=0,
        settings=Settings(database_url=database_url, local_block_versions_days=0),
        maintenance=False,
        public_url="http://tessera.test:8790/",
    )
    try:
        assert cloud.prepare() == "http://tessera.test:8790"
        assert cloud.services is not None
        store = cloud.services.block_store
        url = store.presign_get("blocks/aa").url
        assert url.startswith("http://tessera.test:8790/blocks/blocks/aa?")
        # TESSERA_LOCAL_BLOCK_VERSIONS_DAYS=0: a laptop short of disk keeps no old blocks
        store.put("blocks/" + "ab" * 32, b"first")
        store.delete("blocks/" + "ab" * 32)
        assert store.earlier_versions("blocks/" + "ab" * 32) == []
    finally:
        cloud.stop()


def test_the_local_store_keeps_old_blocks_as_long_as_the_bucket() -> None:
    keep = NONCURRENT_RETENTION_DAYS[CANONICAL_PREFIX]
    assert Settings().local_block_versions_days == keep


def test_serving_beyond_this_machine_says_what_that_means() -> None:
    """`--host 0.0.0.0` printed `http://0.0.0.0:8790` as the URL to log in with, which no
    other machine can use, and said nothing of passwords crossing the network in clear."""
    from tessera.local.cli import exposure_warning

    assert exposure_warning("127.0.0.1", None) is None
    wildcard = exposure_warning("0.0.0.0", None) or ""
    assert "plain HTTP" in wildcard and "--public-url" in wildcard
    named = exposure_warning("0.0.0.0", "http://nas.local:8790") or ""
    assert "plain HTTP" in named and "--public-url" not in named
