"""`DynamoChangeFeed`: the ChangeFeed port on the DynamoDB `changes` table (DESIGN §6).

One item per outbox event: pk `ns_id`, sk `seq`, the `event_id`, and a TTL so the table
holds only recent history. A long-poll only needs "is there anything after seq S"; the
changes themselves are listed from Aurora (`list_folder/continue`), which a client calls
first after being away — so a change whose item already expired costs no data.
Publishing writes only events not there yet (a create-only put, or a batch write after a
batch read), so the table's stream (→ EventBridge Pipe → bus, INSERTs only) carries each
event exactly once as an INSERT, however often it is retried or relayed.
A long-poll queries `seq > cursor` per namespace, with a short, growing backoff.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, cast

from pynamodb.attributes import NumberAttribute, TTLAttribute, UnicodeAttribute
from pynamodb.exceptions import PutError
from pynamodb.models import Model

from tessera.adapters.aws.errors import is_transient
from tessera.ports import ChangeConflictError, ChangeEvent, ChangeFeed, ChangeRefusedError

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse

_BATCH_GET_MAX = 100  # keys per BatchGetItem
# Unprocessed or throttled batch writes: sent again after 0.1, 0.2, 0.4 s.
_UNPROCESSED_ATTEMPTS = 4
_UNPROCESSED_PAUSE_S = 0.1


def _raise_if_invalid(exc: PutError, what: str) -> None:
    """ChangeRefusedError for a write DynamoDB refuses as invalid (an item over 400 KB):
    sent again it is refused again, so the relay must not retry it for ever."""
    if exc.cause_response_code == "ValidationException":
        raise ChangeRefusedError(f"DynamoDB refuses {what}: {exc.cause_response_message}") from exc


class ChangeRecordBase(Model):
    """An item of the `changes` table. Use `changes_model()` for a model bound to a table."""

    ns_id = NumberAttribute(hash_key=True)
    seq = NumberAttribute(range_key=True)
    event_id = UnicodeAttribute()
    kind = UnicodeAttribute()
    payload = UnicodeAttribute(default="{}")  # JSON text: the stream carries it as-is
    expires_at = TTLAttribute(null=True)

    def to_event(self) -> ChangeEvent:
        """The ChangeEvent this item holds."""
        return ChangeEvent(
            event_id=self.event_id,
            ns_id=int(self.ns_id),
            seq=int(self.seq),
            kind=self.kind,
            payload=json.loads(self.payload),
        )


class ClientMaker(Protocol):
    """What PynamoDB asks of a botocore session: `create_client` (`AwsClients` has it)."""

    def create_client(self, service: str, region_name: str | None = None, **kwargs: Any) -> Any:
        """A botocore client of `service`."""
        ...


class _SessionOfEveryThread(threading.local):
    """What PynamoDB's connection keeps per thread (`Connection._local`), holding for every
    thread the same `session` (PynamoDB reads only that attribute)."""

    def __init__(self, session: ClientMaker) -> None:
        self.session = session


def changes_model(
    table_name: str, *, region: str, host: str | None = None, session: ClientMaker | None = None
) -> type[ChangeRecordBase]:
    """A PynamoDB model class bound to `table_name` (PynamoDB binds tables per class).

    `session` makes the model's DynamoDB client: PynamoDB otherwise makes it from a botocore
    session of its own, which loads botocore's endpoint and retry data again and walks every
    service folder botocore ships to check the name "dynamodb" (`clients._KnownServices`),
    about 80 ms of CPU on the first commit of every process, against 14 ms on `AwsClients`'
    session (measured in a process that had made its S3, KMS and SSM clients). The
    session's credentials are the ones used (the Meta's own key settings are not set here).
    With no credentials at all, PynamoDB makes a new client at every call, under
    `AwsClients`' lock; a Lambda always has them."""
    meta = type(
        "Meta",
        (),
        {
            "table_name": table_name,
            "region": region,
            "host": host,
            "billing_mode": "PAY_PER_REQUEST",
            # PynamoDB's defaults (15 s to connect, 30 s to read, 3 retries) let a DynamoDB
            # brownout hold a commit's response for minutes after its transaction committed:
            # the client saw a 504 for a write that happened, and waiting Lambdas used up the
            # function's concurrency. A call answers in milliseconds or not at all; the
            # relay delivers what the fast path could not.
            "connect_timeout_seconds": 1,
            "read_timeout_seconds": 2,
            "max_retry_attempts": 1,
            "stream_view_type": "NEW_IMAGE",  # used by create_table (AWS mode, tests)
        },
    )
    model = cast(type[ChangeRecordBase], type("ChangeRecord", (ChangeRecordBase,), {"Meta": meta}))
    if session is not None:
        # PynamoDB has no setting for the session; its connection exists before any call.
        model._get_connection().connection._local = _SessionOfEveryThread(session)
    return model


class DynamoChangeFeed(ChangeFeed):
    """Publishes and waits on the `changes` table."""

    def __init__(
        self,
        model: type[ChangeRecordBase],
        *,
        ttl: timedelta = timedelta(days=7),
        min_interval: float = 0.05,
        max_interval: float = 0.5,
        max_queries_per_s: float = 100.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._model = model
        self._ttl = ttl
        self._min_interval = min_interval
        self._max_interval = max_interval
        self._max_queries_per_s = max_queries_per_s
        self._sleep = sleep
        self._clock = clock

    def _item(self, event: ChangeEvent) -> ChangeRecordBase:
        return self._model(
            event.ns_id,
            event.seq,
            event_id=event.event_id,
            kind=event.kind,
            payload=json.dumps(dict(event.payload), sort_keys=True, default=str),
            expires_at=self._ttl,
        )

    def publish(self, event: ChangeEvent) -> None:
        """Create the item unless (ns_id, seq) exists; the same event_id again is a no-op.
        An item DynamoDB refuses as invalid (over 400 KB) raises ChangeRefusedError."""
        try:
            self._item(event).save(condition=self._model.seq.does_not_exist())
        except PutError as exc:
            _raise_if_invalid(exc, f"event {event.event_id}")
            if exc.cause_response_code != "ConditionalCheckFailedException":
                raise
            existing = self._model.get(event.ns_id, event.seq, consistent_read=True)
            if existing.event_id != event.event_id:
                raise ChangeConflictError(
                    f"ns {event.ns_id} seq {event.seq} holds event {existing.event_id},"
                    f" not {event.event_id}"
                ) from None

    def publish_many(self, events: Sequence[ChangeEvent]) -> None:
        """Per 100 events: one BatchGetItem skips those already there (the relay re-sends
        what the fast path delivered) and raises ChangeConflictError, before writing any,
        if a key holds another event; then BatchWriteItem writes the rest, 25 a call.

        A batch write takes no condition, so a race can write one event twice: the first
        write is the stream's one INSERT, the second a MODIFY the pipe filters out. A
        conditional PutItem per event cost a round trip each: the relay's sweep of a
        1,000-file sync took 6 s of moto's time. No transaction: a partial write is
        finished by the next sweep. Reading first suits the relay, whose events the fast
        path has mostly delivered already (one read, no write); the fast path itself sends
        its one fresh event with `publish` (`tessera.domain.changes.publish`)."""
        for start in range(0, len(events), _BATCH_GET_MAX):
            self._write_missing(events[start : start + _BATCH_GET_MAX])

    def _write_missing(self, events: Sequence[ChangeEvent]) -> None:
        """Write those of `events` not there yet. Items DynamoDB leaves unprocessed (it
        throttles a hot partition) are sent again after a pause, as AWS asks: with the
        model's one attempt, PynamoDB gave up on them at once and the sweep stopped there."""
        for attempt in range(_UNPROCESSED_ATTEMPTS):
            missing = self._not_there(events)
            batch = self._model.batch_write()
            try:
                with batch:
                    for event in missing:
                        batch.save(self._item(event))
                return
            except PutError as exc:
                _raise_if_invalid(exc, f"a batch of {len(missing)} events")
                throttled = batch.failed_operations or is_transient(exc)
                if not throttled or attempt + 1 == _UNPROCESSED_ATTEMPTS:
                    raise
            time.sleep(_UNPROCESSED_PAUSE_S * 2**attempt)

    def _not_there(self, events: Sequence[ChangeEvent]) -> list[ChangeEvent]:
        """The events with no item yet, each key once (BatchWriteItem refuses a request
        naming a key twice); ChangeConflictError if a key holds, or is given, another event."""
        keys = list(dict.fromkeys((e.ns_id, e.seq) for e in events))
        found = {
            (int(item.ns_id), int(item.seq)): item.event_id
            for item in self._model.batch_get(
                keys, consistent_read=True, attributes_to_get=["ns_id", "seq", "event_id"]
            )
        }
        missing: dict[tuple[int, int], ChangeEvent] = {}
        for event in events:
            key = (event.ns_id, event.seq)
            held = found.get(key) or (missing[key].event_id if key in missing else None)
            if held is None:
                missing[key] = event
            elif held != event.event_id:
                raise ChangeConflictError(
                    f"ns {event.ns_id} seq {event.seq} holds event {held}, not {event.event_id}"
                )
        return list(missing.values())

    def changes_after(self, ns_id: int, seq: int, limit: int = 100) -> list[ChangeEvent]:
        """The events of `ns_id` after `seq`, oldest first (strongly consistent read)."""
        query = self._model.query(ns_id, self._model.seq > seq, consistent_read=True, limit=limit)
        return [item.to_event() for item in query]

    def _has_after(self, ns_id: int, seq: int) -> bool:
        """Whether namespace `ns_id` has an item after `seq` (one strongly consistent read)."""
        query = self._model.query(
            ns_id,
            self._model.seq > seq,
            consistent_read=True,
            limit=1,
            attributes_to_get=["ns_id", "seq"],
        )
        return next(iter(query), None) is not None

    def wait(self, cursors: Mapping[int, int], timeout: float) -> bool:
        """Poll until a namespace has an item after its cursor seq, or `timeout` seconds.

        A round asks each namespace once, in an order drawn per call, and past the deadline
        asks no more, after at least one (a wait with no time left still asks one: with a
        single namespace, a change made before the call counts; with more, the caller's
        next long-poll asks in another order). A round
        had asked every namespace whatever the clock, and for a caller with hundreds of
        shared folders, or meeting slow queries, ran past the function's timeout: a 502 for
        "no changes". The draw spreads a cut round's misses over calls. Rounds come at most
        `max_queries_per_s` queries a second: a user can hold a thousand shared folders,
        and each of their devices then cost 2,000 reads a second, where a round
        of 1,000 now comes every 10 s (one of a few namespaces, every 0.05-0.5 s as before).
        """
        deadline = self._clock() + max(timeout, 0.0)
        order = list(cursors.items())
        random.shuffle(order)
        interval, asked = self._min_interval, False
        while True:
            started = self._clock()
            for ns_id, seq in order:
                if asked and self._clock() >= deadline:
                    return False
                asked = True
                if self._has_after(ns_id, seq):
                    return True
            remaining = deadline - self._clock()
            if remaining <= 0:
                return False
            paced = len(order) / self._max_queries_per_s - (self._clock() - started)
            self._sleep(min(max(interval, paced), remaining))
            interval = min(interval * 1.5, self._max_interval)


#: API Gateway's integration timeout, counted from when it received the request
GATEWAY_TIMEOUT_S = 29.0
#: what a long-poll leaves of it for its answer to be made and sent back
GATEWAY_MARGIN_S = 2.0


def gateway_deadline(event: Mapping[str, Any]) -> float:
    """When a wait for API Gateway's request `event` must end (epoch seconds): before the
    gateway gives up on it. No end for an event without the time it was received."""
    received = (event.get("requestContext") or {}).get("requestTimeEpoch")
    if not isinstance(received, int | float):
        return float("inf")
    return received / 1000 + GATEWAY_TIMEOUT_S - GATEWAY_MARGIN_S


class DeadlineFeed(ChangeFeed):
    """A change feed whose waits end by `deadline` (epoch seconds; set per request) whatever
    timeout they ask for. API Gateway ends a request 29 s after it received it, a Lambda
    cold start included, while the long-poll's wait counts from the handler's start: after
    a slow start a full wait answered 504 instead of "no changes"."""

    def __init__(self, inner: ChangeFeed, clock: Callable[[], float] = time.time) -> None:
        self.inner = inner
        self._requests = threading.local()
        self._clock = clock

    @property
    def deadline(self) -> float:
        """The deadline of the request this thread serves (none until one is set): the
        local gateway's AWS mode runs many long-polls at once, on threads, through one
        function, and each request's deadline overwrote the others'."""
        deadline: float = getattr(self._requests, "deadline", float("inf"))
        return deadline

    @deadline.setter
    def deadline(self, value: float) -> None:
        self._requests.deadline = value

    def publish(self, event: ChangeEvent) -> None:
        self.inner.publish(event)

    def publish_many(self, events: Sequence[ChangeEvent]) -> None:
        self.inner.publish_many(events)

    def wait(self, cursors: Mapping[int, int], timeout: float) -> bool:
        """`inner.wait`, ending by the deadline (past it, one look: a change already there
        still counts)."""
        return self.inner.wait(cursors, min(timeout, self.deadline - self._clock()))


def create_changes_table(model: type[ChangeRecordBase]) -> None:
    """Create the table with its stream (AWS mode and tests; CDK owns it on AWS)."""
    if not model.exists():
        model.create_table(wait=True)


def named_by_event_id(
    records: Sequence[Mapping[str, Any]], response: PartialItemFailureResponse
) -> PartialItemFailureResponse:
    """`response`, its failures named by SequenceNumber (a stream mapping's), renamed by the
    records' eventID: an EventBridge Pipe matches no other identifier, so it took the batch
    as delivered or bisected all of it."""
    event_ids = {r["dynamodb"]["SequenceNumber"]: r["eventID"] for r in records}
    return {
        "batchItemFailures": [
            {"itemIdentifier": event_ids[f["itemIdentifier"]]}
            for f in response["batchItemFailures"]
        ]
    }


def stream_image_to_event(image: Mapping[str, Any]) -> ChangeEvent:
    """The ChangeEvent in a DynamoDB stream record's NewImage (typed attribute values)."""
    return ChangeEvent(
        event_id=str(image["event_id"]["S"]),
        ns_id=int(image["ns_id"]["N"]),
        seq=int(image["seq"]["N"]),
        kind=str(image["kind"]["S"]),
        payload=json.loads(image.get("payload", {}).get("S", "{}")),
    )
