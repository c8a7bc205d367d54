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


def test_a_batch_asks_the_block_store_once_for_all_its_staged_blocks(
    services: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window's batch asks for the staged copies of all its entries in one call (S3
    answers it with one listing per run of keys), not entry by entry; the local store
    answers with a stat each and lists nothing."""
    chunks = [f"file {i}".encode() for i in range(40)]
    upload_id = upload_blocks(services, alice, "/window", chunks)
    asked = _record(monkeypatch, services.block_store, "sizes")
    lists = _record(monkeypatch, services.block_store, "list_sizes")
    entries = [commit_request(f"/w/{i}", [c], upload_id) for i, c in enumerate(chunks[10:30])]
    result = commits.commit_batch(services, alice, CommitBatchRequest(entries=entries))
    assert [e.status for e in result.entries] == [200] * 20
    assert len(asked) == 1
    assert sorted(asked[0]) == sorted(  # type: ignore[call-overload]
        object_keys.staging_key(upload_id, block_id(c), n)
        for n, c in enumerate(chunks)
        if 10 <= n < 30
    )
    assert lists == []


def test_a_session_of_the_grouped_layout_still_commits(
    services: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sessions opened before the ordinal layout keep their keys until they expire."""
    from tessera.domain import uploads

    monkeypatch.setattr(
        uploads,
        "staging_key",
        lambda upload_id, bid, n: f"staging/{upload_id}/{n // 4:x}/{bid.removeprefix('b3:')}",
    )
    chunks = [f"old block {i}".encode() for i in range(10)]
    upload_id = upload_blocks(services, alice, "/old", chunks)
    assert services.block_store.head(
        f"staging/{upload_id}/1/{block_id(chunks[5]).removeprefix('b3:')}"
    )
    commits.commit(services, alice, commit_request("/old-file", chunks[3:6], upload_id))
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
