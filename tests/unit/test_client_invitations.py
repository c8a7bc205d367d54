"""How the client names, picks and tells of invitations (fields from the server)."""

from __future__ import annotations

from typing import Any

import pytest

from tessera_client import invitations


def _inv(ns_id: Any, name: Any, owner: str = "a@x") -> dict[str, Any]:
    return {"ns_id": ns_id, "name": name, "owner_email": owner, "access": "editor"}


def test_only_well_formed_invitations_are_kept() -> None:
    good = _inv(7, "Team")
    answer = {"invitations": [good, "junk", 3, {}, _inv("7", "x"), _inv(8, None)]}
    assert invitations.well_formed(answer) == [good]
    assert invitations.well_formed({"invitations": {"not": "a list"}}) == []
    assert invitations.well_formed(["not", "an object"]) == []


@pytest.mark.parametrize(
    ("name", "named"),
    [
        ("Team", "Team"),
        ("Team Plans", "'Team Plans'"),
        ("it's", "'it'\"'\"'s'"),  # shell-quoted, whatever it holds
        ("Family \U0001f468\u200d\U0001f469", "7"),  # a zero-width joiner shows escaped
        ("Team\x1b[2J", "7"),
    ],
)
def test_an_invitation_is_named_so_the_command_finds_it(name: str, named: str) -> None:
    assert invitations.argument(_inv(7, name)) == named


def test_choose_by_number_or_name_and_tell_two_of_one_name_apart() -> None:
    waiting = [_inv(7, "Team", "a@x"), _inv(9, "team", "b@y"), _inv(11, "Straße")]
    assert invitations.choose(waiting, "11")["name"] == "Straße"
    assert invitations.choose(waiting, "STRASSE")["ns_id"] == 11  # case and form aside
    with pytest.raises(invitations.InvitationNotFound, match=r"7 from a@x; 9 from b@y"):
        invitations.choose(waiting, "TEAM")
    with pytest.raises(invitations.InvitationNotFound, match="waiting: 7, 9, 'Straße'"):
        invitations.choose(waiting, "Other\x1b")
    with pytest.raises(invitations.InvitationNotFound, match="waiting: none"):
        invitations.choose([], "Team")


def test_the_notice_escapes_what_the_server_sent() -> None:
    told = invitations.notice(_inv(7, "Team\x1b[2J", "evil\x07@x"))
    assert "\x1b" not in told and "\x07" not in told
    assert told == (
        "evil\\x07@x invited you to the shared folder Team\\x1b[2J as editor:"
        " `tessera accept 7` to sync it here, or `tessera decline 7`"
    )


def test_an_invitation_sharing_its_name_with_another_is_named_by_number() -> None:
    """Two invitations to a `Docs` (from two owners): `tessera accept Docs`, suggested for
    both, matched two and was refused."""
    waiting = [_inv(7, "Docs", "a@x"), _inv(9, "docs", "b@y"), _inv(11, "Plans")]
    assert [invitations.argument(i, waiting) for i in waiting] == ["7", "9", "Plans"]
    assert "`tessera accept 9`" in invitations.notice(waiting[1], waiting)
