"""A commit checks every staged copy it relies on (a listing of the run of staged keys its
blocks are in): an item whose PUT never happened fails alone, the others commit."""

from __future__ import annotations

import pytest

from tessera.blocks import block_id
from tessera.domain import commits, object_keys
from tessera.domain.errors import Unprocessable
from tessera.domain.models import CommitBatchRequest
from tessera.domain.services import Services
from tessera.ports import Principal

from .conftest import commit_request, get_file, upload_blocks


def test_batch_with_one_unsent_block_fails_only_that_item(
    services: Services, alice: Principal
) -> None:
    one, two = [b"first block of one", b"second block of one"], [b"block of two", b"more two"]
    unsent = [b"urls issued, never PUT"]
    batch = CommitBatchRequest(
        entries=[
            commit_request("/one", one, upload_blocks(services, alice, "/one", one)),
            commit_request(
                "/gap", unsent, upload_blocks(services, alice, "/gap", unsent, put=False)
            ),
            commit_request("/two", two, upload_blocks(services, alice, "/two", two)),
        ]
    )
    result = commits.commit_batch(services, alice, batch)
    assert [(e.tag, e.status) for e in result.entries] == [
        ("success", 200),
        ("failure", 422),
        ("success", 200),
    ]
    assert result.entries[1].error is not None
    assert "never uploaded" in result.entries[1].error.message
    assert get_file(services, alice, "/one") == b"".join(one)
    assert get_file(services, alice, "/two") == b"".join(two)


def _record(monkeypatch: pytest.MonkeyPatch, store: object, name: str) -> list[object]:
    """Calls of `store.<name>` from now on (their first argument)."""
    calls: list[object] = []
    real = getattr(store, name)

    def recording(arg: object, *rest: object, **kw: object) -> object:
        calls.append(arg)
        return real(arg, *rest, **kw)

    monkeypatch.setattr(store, name, recording)
    return calls


def _recorded_listings(monkeypatch: pytest.MonkeyPatch, store: object) -> list[tuple[object, ...]]:
    """(prefix, start_after, limit) of each `list_sizes` call from now on."""
    calls: list[tuple[object, ...]] = []
    real = store.list_sizes  # type: ignore[attr-defined]

    def recording(prefix: str, **range_: object) -> object:
        calls.append((prefix, range_.get("start_after"), range_.get("limit")))
        return real(prefix, **range_)

    monkeypatch.setattr(store, "list_sizes", recording)
    return calls


def test_a_commit_lists_only_the_run_of_its_blocks(
    services: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staged keys sort in issue order: a commit lists from its first block's key, as many
    keys as its run spans, and HEADs nothing; blocks far apart are listed apart."""
    chunks = [f"block {i}".encode() for i in range(300)]
    upload_id = upload_blocks(services, alice, "/all", chunks)
    prefix = f"staging/{upload_id}/"
    heads = _record(monkeypatch, services.block_store, "head")
    lists = _recorded_listings(monkeypatch, services.block_store)
    commits.commit(services, alice, commit_request("/run", chunks[5:9], upload_id))
    assert lists == [(prefix, f"{prefix}00000005", 4)]
    lists.clear()
    far = [chunks[3], chunks[4], chunks[299]]
    commits.commit(services, alice, commit_request("/far", far, upload_id))
    assert sorted(lists) == [(prefix, f"{prefix}00000003", 2), (prefix, f"{prefix}0000012b", 1)]
    assert heads == []
    assert get_file(services, alice, "/far") == b"".join(far)


def test_a_batch_lists_its_run_once(
    services: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window's batch lists the keys of all its entries in one go, not entry by entry."""
    chunks = [f"file {i}".encode() for i in range(40)]
    upload_id = upload_blocks(services, alice, "/window", chunks)
    lists = _recorded_listings(monkeypatch, services.block_store)
    entries = [commit_request(f"/w/{i}", [c], upload_id) for i, c in enumerate(chunks[10:30])]
    result = commits.commit_batch(services, alice, CommitBatchRequest(entries=entries))
    assert [e.status for e in result.entries] == [200] * 20
    prefix = f"staging/{upload_id}/"
    assert lists == [(prefix, f"{prefix}0000000a", 20)]


def test_a_session_of_the_grouped_layout_still_commits(
    services: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sessions opened before the ordinal layout keep their keys until they expire: their
    commits list the key's folder."""
    monkeypatch.setattr(
        object_keys,
        "staging_key",
        lambda upload_id, bid, n: f"staging/{upload_id}/{n // 4:x}/{bid.removeprefix('b3:')}",
    )
    from tessera.domain import uploads

    monkeypatch.setattr(uploads, "staging_key", object_keys.staging_key)
    chunks = [f"old block {i}".encode() for i in range(10)]
    upload_id = upload_blocks(services, alice, "/old", chunks)
    lists = _recorded_listings(monkeypatch, services.block_store)
    commits.commit(services, alice, commit_request("/old-file", chunks[3:6], upload_id))
    prefix = f"staging/{upload_id}/"
    assert sorted(lists) == [(f"{prefix}0/", None, None), (f"{prefix}1/", None, None)]
    assert get_file(services, alice, "/old-file") == b"".join(chunks[3:6])


def test_a_block_whose_put_never_arrived_is_refused(
    services: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunks = [f"block {i}".encode() for i in range(12)]
    upload_id = upload_blocks(services, alice, "/all", chunks)
    lost = object_keys.staging_key(upload_id, block_id(chunks[5]), 5)
    services.block_store.delete(lost)  # its PUT URL was issued; the object is not there
    with pytest.raises(Unprocessable, match="never uploaded"):
        commits.commit(services, alice, commit_request("/x", chunks[5:6], upload_id))
    commits.commit(services, alice, commit_request("/y", chunks[4:5], upload_id))


def test_a_batch_reads_each_upload_session_once(
    services: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six entries from two sessions (a block shared within a session, new nested folders):
    each commits, and each session's row and blocks are read once for the batch."""
    shared = b"a block two files share"
    files = {
        "/s1/a/one": [shared, b"one's own"],
        "/s1/a/two": [shared],
        "/s1/b/three": [b"three"],
        "/s2/four": [b"four"],
        "/s2/c/d/five": [b"five", b"five more"],
        "/s2/c/six": [b"six"],
    }
    first = upload_blocks(services, alice, "/s1/a/one", files["/s1/a/one"] + [b"three"])
    second = upload_blocks(services, alice, "/s2/four", [b"four", b"five", b"five more", b"six"])
    entries = [
        commit_request(path, chunks, first if path.startswith("/s1") else second)
        for path, chunks in files.items()
    ]
    from tessera.metadata.store import Store

    reads = _record(monkeypatch, Store, "_session_reads")
    result = commits.commit_batch(services, alice, CommitBatchRequest(entries=entries))
    assert [e.status for e in result.entries] == [200] * 6
    assert len(reads) == 2
    for path, chunks in files.items():
        assert get_file(services, alice, path) == b"".join(chunks)
