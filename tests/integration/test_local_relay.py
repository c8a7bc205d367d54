"""The local cloud's outbox relay empties the queue without moving any change-feed head
(every commit's transaction already did)."""

from __future__ import annotations

import time

from tessera.domain.services import Services
from tessera.local.relay import start_relay
from tessera.metadata.outbox import pending_count, relay_outbox
from tessera.ports import Principal

from .conftest import put_file


def pending(services: Services) -> int:
    with services.db.transaction() as store:
        return pending_count(store.conn)


def test_a_sweep_deletes_what_it_relayed_and_writes_no_head(
    services: Services, alice: Principal
) -> None:
    for i in range(3):
        put_file(services, alice, f"/f{i}.txt", b"x" * (i + 1))
    assert pending(services) == 3
    result = relay_outbox(services.db, services.feed)
    assert result.relayed == 3 and result.failed == [] and result.lag_s == 0.0
    assert pending(services) == 0
    with services.db.transaction() as store:  # the commits' own transactions moved them
        heads = store.conn.execute("SELECT count(*) FROM local_change_heads").fetchone()
    assert heads == (0,)
    assert relay_outbox(services.db, services.feed).relayed == 0


def test_the_background_relay_empties_the_queue_until_stopped(
    services: Services, alice: Principal
) -> None:
    stop = start_relay(services, interval_s=0.05)
    try:
        put_file(services, alice, "/a.txt", b"a")
        deadline = time.monotonic() + 10
        while pending(services):
            assert time.monotonic() < deadline, "the relay never swept the outbox"
            time.sleep(0.05)
    finally:
        stop()
    put_file(services, alice, "/b.txt", b"b")
    time.sleep(0.3)
    assert pending(services) == 1  # stopped: nothing sweeps any more
