"""Invitations to shared folders as the client shows and names them. Every field comes
from the server, so each is checked before use and shown escaped (`paths.printable`)."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from tessera_client.paths import path_key, printable


class InvitationNotFound(LookupError):
    """No single waiting invitation matches what the user named."""


def well_formed(answer: Any) -> list[Mapping[str, Any]]:
    """The invitations of a `/v1/shares/invitations` (or `/v1/shares`) answer that carry a
    number and a name; anything else the server sent is left out."""
    waiting = answer.get("invitations") if isinstance(answer, Mapping) else None
    return [
        i
        for i in (waiting if isinstance(waiting, list) else [])
        if isinstance(i, Mapping)
        and isinstance(i.get("ns_id"), int)
        and isinstance(i.get("name"), str)
    ]


def argument(invitation: Mapping[str, Any], among: Sequence[Mapping[str, Any]] = ()) -> str:
    """How `tessera accept` / `decline` name an invitation on a command line: its folder's
    name, shell-quoted, when that shows as it is and no other invitation `among` those
    waiting has it; else its number (a name with a control or zero-width character, shown
    escaped, would match nothing, and a shared name matches two)."""
    name = str(invitation["name"])
    twins = [i for i in among if i["ns_id"] != invitation["ns_id"] and _same_name(i, name)]
    if name and printable(name) == name and not twins:
        return shlex.quote(name)
    return str(invitation["ns_id"])


def _same_name(invitation: Mapping[str, Any], name: str) -> bool:
    return path_key(str(invitation["name"])) == path_key(name)


def notice(invitation: Mapping[str, Any], among: Sequence[Mapping[str, Any]] = ()) -> str:
    """One line telling of an invitation waiting (one of `among`), with the commands that
    answer it."""
    who, name, access = (
        printable(str(invitation.get(k, "?"))) for k in ("owner_email", "name", "access")
    )
    named = argument(invitation, among)
    return (
        f"{who} invited you to the shared folder {name} as {access}: `tessera accept {named}`"
        f" to sync it here, or `tessera decline {named}`"
    )


def choose(invitations: Sequence[Mapping[str, Any]], wanted: str) -> Mapping[str, Any]:
    """The one invitation `wanted` names: by number (`ns_id`), else by folder name, case
    and Unicode form aside. `InvitationNotFound` says what is waiting instead, or how to
    tell two of one name apart."""
    by_number = [i for i in invitations if str(i["ns_id"]) == wanted]
    named = by_number or [i for i in invitations if _same_name(i, wanted)]
    if not named:
        waiting = ", ".join(argument(i, invitations) for i in invitations) or "none"
        raise InvitationNotFound(
            f"no invitation named {printable(wanted)!r} is waiting for you (waiting: {waiting})"
        )
    if len(named) > 1:
        choices = "; ".join(
            f"{i['ns_id']} from {printable(str(i.get('owner_email', '?')))}" for i in named
        )
        raise InvitationNotFound(
            f"{len(named)} invitations are named {printable(wanted)!r} ({choices}): give its number"
        )
    return named[0]
