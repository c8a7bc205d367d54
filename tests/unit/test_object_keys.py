"""The block store's key layout (`tessera.domain.object_keys`)."""

from __future__ import annotations

import pytest

from tessera.domain import object_keys

HEX = "ab" * 32


def test_staging_keys_group_a_sessions_blocks_by_their_place() -> None:
    keys = [object_keys.staging_key("up_1", f"b3:{HEX}", n) for n in (0, 127, 128, 300)]
    assert keys == [f"staging/up_1/{g}/{HEX}" for g in ("0", "0", "1", "2")]
    assert [object_keys.staging_group(k) for k in keys[1:3]] == [
        "staging/up_1/0/",
        "staging/up_1/1/",
    ]
    # a session staged before groups: its group is the session
    assert object_keys.staging_group(f"staging/up_1/{HEX}") == "staging/up_1/"


@pytest.mark.parametrize(
    ("key", "upload_id"),
    [
        (f"staging/up_1/3/{HEX}", "up_1"),
        (f"staging/up_1/{HEX}", "up_1"),  # the layout before groups
        (f"blocks/{HEX}", None),
        (f"quarantine/up_1/0/{HEX}", None),
        ("staging//0/x", None),
        ("staging/up_1/0/1/x", None),
        ("staging/up_1", None),
    ],
)
def test_the_upload_of_a_staging_key(key: str, upload_id: str | None) -> None:
    assert object_keys.staged_upload_id(key) == upload_id
