"""Idempotency keys: a write retried after its answer was lost gets that answer again.

A client sends one key per request and the same key on every retry. The first request to
commit with a key stores its response with it (`idempotency_keys`, kept
`idempotency_retention_days`); a retry finds the key taken and gets the stored response,
writing nothing. The same key sent with another request is refused (422): it is a client
bug, and answering with the other request's result would hide it.

Commits claim their keys after the namespace (`commits`; a batch claims all of its keys in
one statement). The other writes (restore, move, delete, create_folder) claim theirs first,
before they look anything up: a retry of a move must not answer 404 because the first
attempt moved the entry away. Keys are per request, so the two orders never meet on one key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter

from tessera.domain.errors import Unprocessable
from tessera.domain.models import Idempotent, dump
from tessera.metadata.store import Store

T = TypeVar("T")


def request_hash(req: Idempotent) -> str:
    """What identifies a request apart from its key: its body (each request type has its
    own fields, so two types never hash alike)."""
    body = req.model_dump_json(exclude={"idempotency_key", *req.unhashed})
    return hashlib.sha256(body.encode()).hexdigest()


def first_answer(
    earlier: tuple[str, dict[str, Any] | None], digest: str, load: Callable[[Any], T]
) -> T:
    """The answer stored with a key an earlier request holds (`earlier`: its request hash
    and response), loaded, when this request (`digest`) is that one; 422 otherwise."""
    first_hash, response = earlier
    if first_hash != digest or response is None:
        raise Unprocessable("idempotency_key was already used for a different request")
    return load(response)


def replayed(store: Store, user_id: str, req: Idempotent, answer: TypeAdapter[T]) -> T | None:
    """Claim `req`'s key (waiting for a concurrent request holding it to end): None when
    this request holds it now, or when it has none; the first response, when an earlier
    identical request holds it. Call first in the request's transaction."""
    if req.idempotency_key is None:
        return None
    digest = request_hash(req)
    earlier = store.claim_idempotency_keys(user_id, {req.idempotency_key: digest})
    if req.idempotency_key not in earlier:
        return None
    return first_answer(earlier[req.idempotency_key], digest, answer.validate_python)


def remember(store: Store, user_id: str, req: Idempotent, response: BaseModel) -> None:
    """Store `response` for retries of `req` (its key claimed by `replayed`), in the same
    transaction as the write it answers."""
    if req.idempotency_key is not None:
        store.store_idempotent_responses(user_id, {req.idempotency_key: (None, dump(response))})
