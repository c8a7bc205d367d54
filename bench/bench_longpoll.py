"""Long-poll through the local gateway: wake-up latency after a commit, and idle long-polls
held at once (with the gateway's memory growth).

The local cloud runs as a subprocess (`python -m tessera.local up`, embedded PostgreSQL),
exactly as `make run` starts it; the clients are httpx (async) in this process.
Targets (issue 3): wake-up p50 <= 50 ms, p99 <= 200 ms; >= 1,000 idle long-polls held.
`TESSERA_BENCH_LONGPOLLS` (default 1000) and `TESSERA_BENCH_WAKEUPS` (default 100) size it.
The gateway lets one user hold `LONGPOLLS_PER_USER` long-polls at once, so the idle ones come
from as many users as that takes, members of one shared folder: one commit wakes them all.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import Figure, human_bytes, print_figures
from tessera.blocks import content_hash
from tessera.local.gateway import LONGPOLLS_PER_USER

EMAIL = "bench@tessera.local"
PASSWORD = "bench-password"
SHARED = "/idle"


def _start_cloud(state: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "TESSERA_LONGPOLL_MIN_S": "0", "TESSERA_LONGPOLL_MAX_S": "600"}
    env.pop("DATABASE_URL", None)
    cmd = [sys.executable, "-m", "tessera.local", "up", "--state", str(state), "--port", "0"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := re.search(r"Tessera local cloud: (http://\S+)", line):
            return proc, m.group(1)
    raise RuntimeError("the local cloud did not start")


def _member(i: int) -> str:
    return f"member{i}@tessera.local"


def _add_users(state: Path, emails: list[str]) -> None:
    for email in emails:
        cmd = [sys.executable, "-m", "tessera.local", "adduser", email, "--password", PASSWORD]
        subprocess.run([*cmd, "--state", str(state)], check=True, capture_output=True)


async def _sign_in(base_url: str, email: str) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        r = await client.post("/v1/auth/token", json={"email": email, "password": PASSWORD})
        r.raise_for_status()
        return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def _commit_empty(client: httpx.AsyncClient, path: str) -> None:
    body = {
        "path": path,
        "parent_rev": None,
        "blocks": [],
        "size": 0,
        "content_hash": content_hash([]),
    }
    r = await client.post("/v1/commit", json=body)
    r.raise_for_status()


async def _cursor(client: httpx.AsyncClient) -> str:
    r = await client.post("/v1/list_folder", json={"path": "", "recursive": True})
    r.raise_for_status()
    cursor: str = r.json()["cursor"]
    while r.json()["has_more"]:
        r = await client.post("/v1/list_folder/continue", json={"cursor": cursor})
        cursor = r.json()["cursor"]
    return cursor


async def _wakeups(
    client: httpx.AsyncClient, poller: httpx.AsyncClient, n: int
) -> tuple[list[float], list[float]]:
    """(commit returned -> long-poll answered, commit sent -> long-poll answered), in ms.

    The first is 0 when the long-poll is answered before the commit's own response arrives.
    """
    after_return: list[float] = []
    end_to_end: list[float] = []
    for i in range(n):
        cursor = await _cursor(client)
        woke: dict[str, float] = {}

        async def poll(cursor: str = cursor, woke: dict[str, float] = woke) -> Any:
            r = await poller.post(
                "/v1/list_folder/longpoll", json={"cursor": cursor, "timeout": 30}
            )
            woke["at"] = time.perf_counter()
            return r.json()

        task = asyncio.create_task(poll())
        await asyncio.sleep(0.05)  # let the long-poll reach its wait
        sent = time.perf_counter()
        await _commit_empty(client, f"/wake/{i}.txt")
        returned = time.perf_counter()
        answer = await asyncio.wait_for(task, 30)
        assert answer["changes"] is True, answer
        after_return.append(max(0.0, woke["at"] - returned) * 1000)
        end_to_end.append((woke["at"] - sent) * 1000)
    return after_return, end_to_end


async def _idle(
    base_url: str,
    owner: dict[str, str],
    members: list[dict[str, str]],
    n: int,
    gateway: psutil.Process,
) -> dict[str, Any]:
    # one client per member, each as many long-polls as a user may hold: httpx's pool costs
    # O(connections) per request, so small clients keep the client side from being measured
    per_client = LONGPOLLS_PER_USER
    clients = [
        httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            timeout=180,
            limits=httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client),
        )
        for headers in members
    ]
    # the commit goes on a client of its own: the pollers' pools are all busy
    committer = httpx.AsyncClient(base_url=base_url, headers=owner, timeout=60)
    try:
        cursors = [await _cursor(client) for client in clients]
        rss_before = gateway.memory_info().rss
        started = time.perf_counter()
        tasks = [
            asyncio.create_task(
                clients[i // per_client].post(
                    "/v1/list_folder/longpoll",
                    json={"cursor": cursors[i // per_client], "timeout": 170},
                )
            )
            for i in range(n)
        ]
        # held = connected to the gateway and not answered; wait until every socket is open
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            conns = len([c for c in gateway.net_connections() if c.status == "ESTABLISHED"])
            if conns >= n:
                break
            await asyncio.sleep(0.25)
        await asyncio.sleep(2.0)  # let every request reach its wait
        opened_s = time.perf_counter() - started
        answered_early = sum(t.done() for t in tasks)
        rss_held = gateway.memory_info().rss
        threads = gateway.num_threads()
        sent = time.perf_counter()
        await _commit_empty(committer, f"{SHARED}/wake.txt")
        results = await asyncio.gather(*tasks, return_exceptions=True)
        all_woken_ms = (time.perf_counter() - sent) * 1000
    finally:
        for client in [*clients, committer]:
            await client.aclose()
    woken = sum(
        1 for r in results if isinstance(r, httpx.Response) and r.json().get("changes") is True
    )
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    return {
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "held": n - answered_early,  # answered or failed before the commit: not held
        "woken": woken,
        "rss_before": rss_before,
        "rss_held": rss_held,
        "threads": threads,
        "open_s": opened_s,
        "all_woken_ms": all_woken_ms,
    }


async def _run(
    base_url: str, gateway: psutil.Process, idle_n: int, members: list[str]
) -> list[Figure]:
    wakeups = int(os.environ.get("TESSERA_BENCH_WAKEUPS", "100"))
    owner = await _sign_in(base_url, EMAIL)
    members_signed_in = [await _sign_in(base_url, email) for email in members]
    async with httpx.AsyncClient(base_url=base_url, timeout=60, headers=owner) as client:
        await _commit_empty(client, "/warm.txt")
        r = await client.post("/v1/create_folder", json={"path": SHARED})
        r.raise_for_status()
        for email, headers in zip(members, members_signed_in, strict=True):
            # a user is provisioned by their first request; a share needs them known
            (await client.get("/v1/account", headers=headers)).raise_for_status()
            r = await client.post("/v1/share", json={"path": SHARED, "email": email})
            r.raise_for_status()
            accept = {"ns_id": r.json()["ns_id"]}
            r = await client.post("/v1/shares/accept", json=accept, headers=headers)
            r.raise_for_status()
        async with httpx.AsyncClient(base_url=base_url, timeout=60, headers=owner) as poller:
            after_return, end_to_end = await _wakeups(client, poller, wakeups)
    idle = await _idle(base_url, owner, members_signed_in, idle_n, gateway)
    p50, p99 = _percentile(after_return, 50), _percentile(after_return, 99)
    growth = idle["rss_held"] - idle["rss_before"]
    return [
        Figure(
            f"wake-up after commit returns, p50 ({wakeups} commits)",
            f"{p50:.1f} ms",
            "<= 50 ms",
            p50 <= 50,
        ),
        Figure("wake-up after commit returns, p99", f"{p99:.1f} ms", "<= 200 ms", p99 <= 200),
        Figure(
            "commit sent -> long-poll answered, p50 / p99",
            f"{_percentile(end_to_end, 50):.1f} / {_percentile(end_to_end, 99):.1f} ms",
        ),
        Figure("mean wake-up after commit returns", f"{statistics.fmean(after_return):.1f} ms"),
        Figure("idle long-polls held at once", f"{idle['held']}", ">= 1,000", idle["held"] >= 1000),
        Figure(
            "  ... all woken by one commit", f"{idle['woken']} in {idle['all_woken_ms']:.0f} ms"
        ),
        Figure("  ... failed (client side)", f"{idle['errors']} {idle['first_error'][:60]}"),
        Figure(
            "  gateway RSS before -> holding",
            f"{human_bytes(idle['rss_before'])} -> {human_bytes(idle['rss_held'])}",
        ),
        Figure(
            "  gateway RSS growth per idle long-poll",
            f"{human_bytes(growth / max(idle['held'], 1))}",
        ),
        Figure("  gateway threads while holding", str(idle["threads"])),
        Figure("  time to open them all", f"{idle['open_s']:.1f} s"),
    ]


def main() -> None:
    """Start a local cloud, measure, print the figures, stop it."""
    with tempfile.TemporaryDirectory(prefix="tessera-bench-longpoll-") as tmp:
        state = Path(tmp) / "state"
        proc, base_url = _start_cloud(state)
        idle_n = int(os.environ.get("TESSERA_BENCH_LONGPOLLS", "1000"))
        members = [_member(i) for i in range(-(-idle_n // LONGPOLLS_PER_USER))]
        try:
            _add_users(state, [EMAIL, *members])
            figures = asyncio.run(_run(base_url, psutil.Process(proc.pid), idle_n, members))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
    print_figures("Long-poll through the local gateway", figures)


if __name__ == "__main__":
    main()
