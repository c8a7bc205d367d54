"""`EventBridgePublisher`: domain events leaving the system on the `tessera` bus (DESIGN §6).

Rules on the bus route them to the dedup queue, access analytics and anything else. The
detail-type is `tessera.<kind>` (e.g. `tessera.file`); the detail carries the event as the
change feed has it, so consumers can de-duplicate on `event_id`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from tessera.ports import ChangeEvent

if TYPE_CHECKING:
    from mypy_boto3_events import EventBridgeClient
    from mypy_boto3_events.type_defs import PutEventsRequestEntryTypeDef

_BATCH = 10  # PutEvents takes at most 10 entries...
_REQUEST_BYTES = 256 * 1024  # ...of at most 256 KB together (refused whole when over)


def detail_of(event: ChangeEvent) -> dict[str, object]:
    """The JSON detail of a bus event."""
    return {
        "event_id": event.event_id,
        "ns_id": event.ns_id,
        "seq": event.seq,
        "kind": event.kind,
        "payload": dict(event.payload),
    }


class EventBridgePublisher:
    """Puts ChangeEvents on one event bus, reporting which ones failed."""

    def __init__(self, client: EventBridgeClient, bus_name: str, source: str = "tessera") -> None:
        self._events = client
        self._bus = bus_name
        self._source = source

    def _entry(self, event: ChangeEvent) -> PutEventsRequestEntryTypeDef:
        return {
            "EventBusName": self._bus,
            "Source": self._source,
            "DetailType": f"tessera.{event.kind}",
            "Detail": json.dumps(detail_of(event), sort_keys=True, default=str),
            "Resources": [],
        }

    def publish(self, events: Iterable[ChangeEvent]) -> list[ChangeEvent]:
        """Put every event on the bus; the events EventBridge refused (empty: all in).

        Requests hold at most 10 entries and 256 KB: EventBridge refuses a larger request
        whole, and the stream consumer would retry the batch (sending its first events
        again) until it went to the dead-letter queue. An event larger than a request may
        be is refused without asking."""
        failed: list[ChangeEvent] = []
        batch: list[tuple[ChangeEvent, PutEventsRequestEntryTypeDef]] = []
        size = 0
        for event in events:
            entry = self._entry(event)
            n = _entry_size(entry)
            if n > _REQUEST_BYTES:
                failed.append(event)
                continue
            if batch and (len(batch) == _BATCH or size + n > _REQUEST_BYTES):
                failed += self._put(batch)
                batch, size = [], 0
            batch.append((event, entry))
            size += n
        if batch:
            failed += self._put(batch)
        return failed

    def _put(
        self, batch: Sequence[tuple[ChangeEvent, PutEventsRequestEntryTypeDef]]
    ) -> list[ChangeEvent]:
        resp = self._events.put_events(Entries=[entry for _event, entry in batch])
        if not resp.get("FailedEntryCount"):
            return []
        # Result entries are positional: an ErrorCode marks a refused entry.
        return [e for (e, _), r in zip(batch, resp["Entries"], strict=True) if r.get("ErrorCode")]


def _entry_size(entry: PutEventsRequestEntryTypeDef) -> int:
    """An entry's size as EventBridge counts it: its Source, DetailType, Detail and
    Resources in UTF-8 (and 14 bytes for a Time, which ours leave to EventBridge)."""
    texts = [entry.get("Source", ""), entry.get("DetailType", ""), entry.get("Detail", "")]
    return sum(len(t.encode()) for t in [*texts, *entry.get("Resources", [])])


class PublishFailed(Exception):
    """EventBridge refused an event (the record is reported as a batch item failure)."""
