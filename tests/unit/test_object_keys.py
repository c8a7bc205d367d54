"""The block store's key layout (`tessera.domain.object_keys`)."""

from __future__ import annotations

import pytest

from tessera.domain import object_keys

HEX = "ab" * 32


def test_staging_keys_sort_in_issue_order() -> None:
    ordinals = [0, 9, 10, 127, 128, 300, 70_000]
    keys = [object_keys.staging_key("up_1", f"b3:{HEX}", n) for n in ordinals]
    assert keys[0] == f"staging/up_1/00000000-{HEX}"
    assert sorted(keys) == keys
    assert [object_keys.staged_run(k) for k in keys] == [("staging/up_1/", n) for n in ordinals]


def test_a_run_starts_after_the_ordinal_alone() -> None:
    """StartAfter the ordinal lists its key first and nothing of the ordinal before it."""
    start = object_keys.run_start_after("staging/up_1/", 10)
    before, at = (object_keys.staging_key("up_1", f"b3:{HEX}", n) for n in (9, 10))
    assert before < start < at


@pytest.mark.parametrize(
    ("key", "folder"),
    [  # the layouts before ordinals: their commits list the key's folder
        (f"staging/up_1/3/{HEX}", "staging/up_1/3/"),
        (f"staging/up_1/{HEX}", "staging/up_1/"),
    ],
)
def test_earlier_layouts_have_no_run_and_list_their_folder(key: str, folder: str) -> None:
    assert object_keys.staged_run(key) is None
    assert object_keys.staging_folder(key) == folder


@pytest.mark.parametrize(
    ("key", "upload_id"),
    [
        (f"staging/up_1/0000000a-{HEX}", "up_1"),
        (f"staging/up_1/3/{HEX}", "up_1"),  # the grouped layout
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
