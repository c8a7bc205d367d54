"""File ids: unguessable, and sorting by creation time (B-tree inserts at the right edge)."""

from __future__ import annotations

import re
import time

from tessera.domain.views import new_file_id


def test_a_file_id_is_a_millisecond_time_then_64_random_bits() -> None:
    before = time.time_ns() // 1_000_000
    file_id = new_file_id()
    after = time.time_ns() // 1_000_000
    assert re.fullmatch(r"id:[0-9a-f]{12}[0-9a-f]{16}", file_id)
    assert before <= int(file_id[3:15], 16) <= after


def test_later_ids_sort_after_earlier_ones_and_never_repeat() -> None:
    first = [new_file_id() for _ in range(5_000)]
    time.sleep(0.002)
    later = new_file_id()
    assert all(earlier < later for earlier in first)
    assert len(set(first)) == len(first)
    assert len({f[15:] for f in first}) == len(first)  # the random part alone differs too
