"""A long-poll whose client hangs up ends at once and quietly; so does one cut by shutdown."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tessera.adapters.local.identity import LocalUsers
from tessera.local.cloud import LocalCloud
from tessera.settings import Settings

PASSWORD = "long enough password 1"


def _bearer(base_url: str, email: str) -> dict[str, str]:
    r = httpx.post(base_url + "/v1/auth/token", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": "Bearer " + r.json()["access_token"]}


def _waiting(cloud: LocalCloud) -> int:
    assert cloud._feed is not None
    return cloud._feed.waiting()


def test_abandoned_longpoll_ends_quietly(
    tmp_path: Path, database_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(database_url=database_url, longpoll_min_s=0.0, longpoll_max_s=30.0)
    cloud = LocalCloud(tmp_path / "state", port=0, settings=settings)
    base_url = cloud.start()
    try:
        email = f"u{uuid.uuid4().hex[:8]}@example.com"
        LocalUsers(database_url).add(email, PASSWORD)
        headers = _bearer(base_url, email)
        cursor = httpx.post(
            base_url + "/v1/list_folder", json={"path": ""}, headers=headers
        ).json()["cursor"]
        body = {"cursor": cursor, "timeout": 25}
        with pytest.raises(httpx.TimeoutException):  # the client gives up and hangs up
            httpx.post(
                base_url + "/v1/list_folder/longpoll", json=body, headers=headers, timeout=1.0
            )
        deadline = time.monotonic() + 5
        while _waiting(cloud) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _waiting(cloud) == 0  # the server stopped waiting for nobody

        # a long-poll still open when the server stops is cut without a traceback
        # ... and answered, where a client still waits: a 503 it retries (a 408 had reached
        # the daemon as "waiting for the server: 408")
        answers: list[httpx.Response] = []
        poller = threading.Thread(
            target=lambda: answers.append(
                httpx.post(
                    base_url + "/v1/list_folder/longpoll", json=body, headers=headers, timeout=30
                )
            ),
            daemon=True,
        )
        poller.start()
        deadline = time.monotonic() + 5
        while not _waiting(cloud) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _waiting(cloud) == 1
    finally:
        cloud.stop()
    poller.join(10)
    (answer,) = answers
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "2"
    assert "the server is stopping" in answer.json()["error"]["message"]
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert "CancelledError" not in err
