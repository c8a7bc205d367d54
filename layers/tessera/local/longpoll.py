"""The gateway's native long-poll: the cursor is checked by the domain, the wait is awaited.

`POST /v1/list_folder/longpoll` through the API resolver would hold a worker thread for up
to 480 s; here an idle long-poll is one `asyncio.Event` on the gateway's loop.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from tessera.adapters.local.change_feed import PostgresChangeFeed
from tessera.domain.listing import plan_longpoll
from tessera.domain.models import LongpollRequest, LongpollResponse, dump
from tessera.domain.services import Services
from tessera.local.gateway import Longpoll
from tessera.ports import Principal


def native_longpoll(services: Services, feed: PostgresChangeFeed) -> Longpoll:
    """A gateway long-poll handler over `services` (cursor rules) and `feed` (the wait)."""

    async def longpoll(principal: Principal, body: bytes) -> dict[str, Any] | None:
        try:
            req = LongpollRequest.model_validate(json.loads(body or b"{}"))
        except (ValueError, RecursionError, ValidationError):  # RecursionError: deep nesting
            return None  # the API answers malformed bodies, with its exact 422
        plan = plan_longpoll(services, principal, req)  # HMAC check only: no I/O
        changed = plan.ready or await feed.wait_async(plan.watch, plan.timeout)
        result: dict[str, Any] = dump(LongpollResponse(changes=changed, backoff=plan.backoff))
        return result

    return longpoll
