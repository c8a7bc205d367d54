"""`download_each`: many files downloaded at once (a sync's and `tessera get`'s), stopped at
once by a full disk or an unreachable server."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, cast

import pytest

from tessera_client.api import Api, ServerUnreachable
from tessera_client.fs import DiskFullError
from tessera_client.getfile import RemoteFile, download_folder
from tessera_client.transfer import FILE_WORKERS, Transfers, download_each

WAIT_S = 10.0
Stopping = Callable[[], bool]


def _told(stopping: Stopping) -> bool:
    """Whether the download is told to stop within `WAIT_S`."""
    deadline = time.monotonic() + WAIT_S
    while not stopping():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _outcomes(futures: list[tuple[str, Future[str]]]) -> dict[str, str]:
    out = {}
    for item, fut in futures:
        e = fut.exception()
        out[item] = fut.result() if e is None else type(e).__name__
    return out


def test_files_are_fetched_at_once_and_finished_on_the_calling_thread() -> None:
    """Small files are round-trip bound: one after another, a folder of them took one
    round trip each. The barrier is only passed when `FILE_WORKERS` fetches run together."""
    together = threading.Barrier(FILE_WORKERS, timeout=WAIT_S)
    finished_on: set[threading.Thread] = set()
    done: list[tuple[str, Future[str]]] = []

    def fetch(item: str, _stopping: Stopping) -> str:
        together.wait()
        return item.upper()

    def finished(item: str, fut: Future[str]) -> None:
        finished_on.add(threading.current_thread())
        done.append((item, fut))

    items = [f"f{i}" for i in range(2 * FILE_WORKERS)]
    download_each(items, fetch, finished)
    assert _outcomes(done) == {i: i.upper() for i in items}
    assert finished_on == {threading.current_thread()}


@pytest.mark.parametrize(
    "fatal", [DiskFullError(errno.ENOSPC, "disk full"), ServerUnreachable("gone")]
)
def test_a_full_disk_or_an_unreachable_server_fails_what_has_not_begun(
    fatal: Exception,
) -> None:
    """Each download not yet begun would have tried (and waited out its retries) anyway."""
    begun: list[str] = []
    done: list[tuple[str, Future[str]]] = []
    first_failed = threading.Event()
    all_running = threading.Barrier(FILE_WORKERS, timeout=WAIT_S)

    def fetch(item: str, _stopping: Stopping) -> str:
        begun.append(item)
        all_running.wait()
        if item == "first":
            raise fatal
        first_failed.wait(WAIT_S)  # the others running then end after it
        return item

    def finished(item: str, fut: Future[str]) -> None:
        if item == "first":
            first_failed.set()
        done.append((item, fut))

    running = [f"running{i}" for i in range(FILE_WORKERS - 1)]
    queued = [f"queued{i}" for i in range(3)]
    download_each(["first", *running, *queued], fetch, finished)
    assert sorted(begun) == sorted(["first", *running])
    failed = type(fatal).__name__
    assert _outcomes(done) == {"first": failed} | {i: i for i in running} | dict.fromkeys(
        queued, failed
    )


def test_what_has_not_begun_is_dropped_when_finishing_one_fails() -> None:
    """`tessera get` stops at a full disk: the rest must not go on writing to it."""
    fetched: list[str] = []
    stopped: list[str] = []

    def fetch(item: str, stopping: Stopping) -> str:
        fetched.append(item)
        if item != "first" and _told(stopping):  # (a download: until its next block)
            stopped.append(item)
        return item

    def finished(item: str, fut: Future[str]) -> None:
        if item == "first":
            raise DiskFullError(errno.ENOSPC, "disk full")

    items = ["first", *(f"f{i}" for i in range(10 * FILE_WORKERS))]
    with pytest.raises(DiskFullError):
        download_each(items, fetch, finished)
    # those running then, and the one the first's worker took next; not the other 36
    assert len(fetched) <= FILE_WORKERS + 1
    # and those were told to stop, not waited for to their end (here: WAIT_S each)
    assert sorted(stopped) == sorted(set(fetched) - {"first"})


def test_ctrl_c_tells_the_downloads_running_to_stop() -> None:
    running = threading.Barrier(FILE_WORKERS + 1, timeout=WAIT_S)
    told: list[bool] = []

    def fetch(item: str, stopping: Stopping) -> str:
        running.wait()
        told.append(_told(stopping))
        return item

    def finished(item: str, fut: Future[str]) -> None:
        raise AssertionError("nothing ends before it is told to stop")

    def ctrl_c() -> Iterator[str]:
        yield from (f"f{i}" for i in range(FILE_WORKERS))
        running.wait()  # every one running: the user presses Ctrl-C
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download_each(ctrl_c(), fetch, finished)
    assert told == [True] * FILE_WORKERS


class _NoApi:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the API was used ({name})")


def test_a_folder_is_downloaded_several_files_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    together = threading.Barrier(FILE_WORKERS, timeout=WAIT_S)

    def download(self: Transfers, path: str, *args: Any, **kw: Any) -> None:
        together.wait()
        (tmp_path / "Docs" / path).write_bytes(b"x")

    monkeypatch.setattr(Transfers, "download", download)
    files = [RemoteFile(f"f{i}.txt", f"id{i}", 1, "h", 1) for i in range(FILE_WORKERS)]
    result = download_folder(cast(Api, _NoApi()), tmp_path / "Docs", [], files)
    assert (result.saved, result.problems) == (FILE_WORKERS, [])


def test_a_daemon_told_to_stop_stops_the_downloads_and_begins_no_more() -> None:
    stop = threading.Event()
    running = threading.Barrier(FILE_WORKERS + 1, timeout=WAIT_S)
    told: list[bool] = []
    done: list[tuple[str, Future[str]]] = []

    def fetch(item: str, stopping: Stopping) -> str:
        running.wait()
        told.append(_told(stopping))
        return item

    def finished(item: str, fut: Future[str]) -> None:
        done.append((item, fut))

    def daemon_stops() -> None:
        running.wait()  # every worker running: SIGTERM
        stop.set()

    signal = threading.Thread(target=daemon_stops)
    signal.start()
    items = [f"f{i}" for i in range(3 * FILE_WORKERS)]
    download_each(items, fetch, finished, stop=stop)
    signal.join()
    assert told == [True] * FILE_WORKERS
    outcome = _outcomes(done)
    assert sorted(i for i, o in outcome.items() if o == i) == items[:FILE_WORKERS]
    assert {o for i, o in outcome.items() if o != i} == {"DownloadStopped"}
