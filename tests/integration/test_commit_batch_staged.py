"""A batch commit checks every staged copy (one listing of the session's staged blocks):
an item whose PUT never happened fails alone, the others commit."""

from __future__ import annotations

from tessera.domain import commits
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
