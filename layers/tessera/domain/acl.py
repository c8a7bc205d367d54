"""Who may do what in a namespace (DESIGN §4): pure rules over the member's access.

viewer: read and download · editor: also write · owner: also share, unshare, delete it.
Callers check visibility first (not a member → 404, never 403): these rules only decide
between allowed and 403 for something the caller can see.
"""

from __future__ import annotations

from enum import StrEnum

from tessera.domain.errors import Forbidden


class Action(StrEnum):
    """What an operation needs."""

    READ = "read"
    WRITE = "write"
    SHARE = "share"


_ALLOWED: dict[str, frozenset[Action]] = {
    "viewer": frozenset({Action.READ}),
    "editor": frozenset({Action.READ, Action.WRITE}),
    "owner": frozenset({Action.READ, Action.WRITE, Action.SHARE}),
}


def allows(access: str, action: Action) -> bool:
    """True when a member with `access` may do `action` (unknown access allows nothing)."""
    return action in _ALLOWED.get(access, frozenset())


def require(access: str, action: Action, what: str) -> None:
    """Raise `Forbidden` (403) unless `access` allows `action`; `what` names the target."""
    if not allows(access, action):
        verb = {Action.READ: "read", Action.WRITE: "change", Action.SHARE: "share"}[action]
        raise Forbidden(f"your access to {what} is {access!r}: you may not {verb} it")
