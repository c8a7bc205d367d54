"""A share is an invitation until its invitee accepts it: nothing of the folder reaches
them before; they may decline; the owner may withdraw it."""

from __future__ import annotations

import pytest

from tessera.domain import files, listing, sharing
from tessera.domain.errors import NotFound, Unprocessable
from tessera.domain.models import (
    DeclineRequest,
    DeleteRequest,
    InvitationRequest,
    MetadataRequest,
    ShareRequest,
    TrashListRequest,
    UnshareRequest,
)
from tessera.domain.services import Services
from tessera.ports import Principal

from .conftest import Race, get_file, principal, put_file, share_with
from .test_domain_sharing import _kept_from_members


def _invite(svc: Services, owner: Principal, path: str, who: Principal, access: str) -> int:
    """`owner` invites `who` (known to the server) into `path`; the shared folder's ns_id."""
    sharing.account(svc, who)  # users exist once they have made a request
    info = sharing.share(svc, owner, ShareRequest(path=path, email=who.email, access=access))  # type: ignore[arg-type]
    return info.ns_id


def _accept(svc: Services, who: Principal, ns_id: int) -> None:
    sharing.accept(svc, who, InvitationRequest(ns_id=ns_id))


def _root_names(svc: Services, who: Principal) -> list[str]:
    return [e.path_display for e in listing.list_folder(svc, who, "/", True, None).entries]


def test_nothing_of_an_invitation_reaches_the_invitee_until_they_accept(
    services: Services, alice: Principal, bob: Principal, carol: Principal
) -> None:
    put_file(services, alice, "/Team/spec.md", b"the spec")
    before = sharing.account(services, bob).used_bytes
    ns_id = _invite(services, alice, "/Team", bob, "viewer")
    assert _root_names(services, bob) == []
    with pytest.raises(NotFound):
        files.metadata(services, bob, MetadataRequest(path="/Team"))
    mine = sharing.shares(services, bob)
    assert mine.shares == []
    [waiting] = mine.invitations
    assert (waiting.ns_id, waiting.name, waiting.owner_email, waiting.access) == (
        ns_id,
        "Team",
        alice.email,
        "viewer",
    )
    [theirs] = sharing.shares(services, alice).shares
    assert [(m.email, m.access) for m in theirs.members] == [(alice.email, "owner")]
    assert [(m.email, m.access) for m in theirs.invited] == [(bob.email, "viewer")]

    _invite(services, alice, "/Team", carol, "editor")
    info = sharing.accept(services, bob, InvitationRequest(ns_id=ns_id))
    assert (info.path_display, info.access, info.owner_email, info.invited) == (
        "/Team",
        "viewer",
        alice.email,
        [],  # pending invitations are the owner's to see
    )
    [theirs] = sharing.shares(services, alice).shares
    assert [m.email for m in theirs.invited] == [carol.email]
    assert get_file(services, bob, "/Team/spec.md") == b"the spec"
    assert sharing.shares(services, bob).invitations == []
    assert sharing.account(services, bob).used_bytes == before  # charged to its owner
    with pytest.raises(NotFound):  # accepted once: nothing is waiting any more
        _accept(services, bob, ns_id)


def test_a_declined_invitation_is_gone_and_may_be_sent_again(
    services: Services, alice: Principal, bob: Principal
) -> None:
    put_file(services, alice, "/Team/a", b"a")
    ns_id = _invite(services, alice, "/Team", bob, "editor")
    [declined] = sharing.decline(services, bob, DeclineRequest(ns_id=ns_id)).invitations
    assert (declined.ns_id, declined.name, declined.access) == (ns_id, "Team", "editor")
    assert sharing.shares(services, bob).invitations == []
    assert sharing.shares(services, alice).shares[0].invited == []
    with pytest.raises(NotFound):
        _accept(services, bob, ns_id)
    with pytest.raises(NotFound):
        sharing.decline(services, bob, DeclineRequest(ns_id=ns_id))
    assert _invite(services, alice, "/Team", bob, "editor") == ns_id
    _accept(services, bob, ns_id)
    assert get_file(services, bob, "/Team/a") == b"a"


def test_nobody_accepts_or_declines_another_users_invitation(
    services: Services, alice: Principal, bob: Principal, carol: Principal
) -> None:
    put_file(services, alice, "/Team/a", b"a")
    ns_id = _invite(services, alice, "/Team", bob, "editor")
    sharing.account(services, carol)
    with pytest.raises(NotFound, match="no invitation"):
        _accept(services, carol, ns_id)
    with pytest.raises(NotFound, match="no invitation"):
        sharing.decline(services, carol, DeclineRequest(ns_id=ns_id))
    with pytest.raises(NotFound, match="no invitation from"):
        sharing.decline(services, carol, DeclineRequest(from_email=alice.email))
    with pytest.raises(NotFound):  # nor the owner her own folder's
        _accept(services, alice, ns_id)
    assert _root_names(services, carol) == []
    assert [i.ns_id for i in sharing.shares(services, bob).invitations] == [ns_id]


def test_sharing_again_changes_what_the_invitation_offers(
    services: Services, alice: Principal, bob: Principal
) -> None:
    put_file(services, alice, "/Team/a", b"a")
    ns_id = _invite(services, alice, "/Team", bob, "editor")
    _invite(services, alice, "/Team", bob, "viewer")
    assert [i.access for i in sharing.shares(services, bob).invitations] == ["viewer"]
    _accept(services, bob, ns_id)
    assert [s.access for s in sharing.shares(services, bob).shares] == ["viewer"]


def test_the_owner_withdraws_an_invitation_or_every_invitation(
    services: Services, alice: Principal, bob: Principal, carol: Principal
) -> None:
    put_file(services, alice, "/Team/a", b"a")
    ns_id = _invite(services, alice, "/Team", bob, "editor")
    _invite(services, alice, "/Team", carol, "viewer")
    info = sharing.unshare(services, alice, UnshareRequest(path="/Team", email=bob.email.upper()))
    assert [m.email for m in info.invited] == [carol.email]
    with pytest.raises(NotFound):
        _accept(services, bob, ns_id)
    with pytest.raises(NotFound, match="neither a member"):
        sharing.unshare(services, alice, UnshareRequest(path="/Team", email=bob.email))
    info = sharing.unshare(services, alice, UnshareRequest(path="/Team"))
    assert info.invited == []
    assert sharing.shares(services, carol).invitations == []


def test_a_shared_folder_deleted_takes_its_invitations_along(
    services: Services, alice: Principal, bob: Principal
) -> None:
    put_file(services, alice, "/Team/a", b"a")
    ns_id = _invite(services, alice, "/Team", bob, "editor")
    files.delete(services, alice, DeleteRequest(path="/Team"))
    assert sharing.shares(services, bob).invitations == []
    with pytest.raises(NotFound):
        _accept(services, bob, ns_id)
    assert _root_names(services, bob) == []


def test_what_the_owner_deleted_before_anyone_accepted_stays_hers(
    services: Services, alice: Principal, bob: Principal
) -> None:
    """The owner is alone in a folder she shared until someone accepts: what she deletes
    meanwhile is hers, as what she deleted before the share is."""
    put_file(services, alice, "/Team/keep", b"keep")
    secret = put_file(services, alice, "/Team/private", b"private")
    ns_id = _invite(services, alice, "/Team", bob, "editor")
    files.delete(services, alice, DeleteRequest(path="/Team/private"))
    _accept(services, bob, ns_id)
    assert files.trash_list(services, bob, TrashListRequest(path="/Team")).entries == []
    _kept_from_members(services, alice, bob, secret, b"private")


def test_one_sender_holds_at_most_max_invitations_from_one_and_all_at_most_max(
    services: Services,
    alice: Principal,
    bob: Principal,
    carol: Principal,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Filling a user's invitations (so nobody else's reach them) takes many senders, and
    the invitee declines all of one sender's at once."""
    monkeypatch.setattr(sharing, "MAX_INVITATIONS", 3)
    monkeypatch.setattr(sharing, "MAX_INVITATIONS_FROM_ONE", 2)
    for name in ("A", "B", "C"):
        put_file(services, alice, f"/{name}/x", b"x")
    put_file(services, carol, "/D/x", b"x")
    dave = principal("dave")
    put_file(services, dave, "/E/x", b"x")
    _invite(services, alice, "/A", bob, "editor")
    _invite(services, alice, "/B", bob, "editor")
    with pytest.raises(Unprocessable, match="has 2 invitations from you waiting"):
        _invite(services, alice, "/C", bob, "editor")
    _invite(services, alice, "/B", bob, "viewer")  # changing one held is no new one
    _invite(services, carol, "/D", bob, "editor")
    with pytest.raises(Unprocessable, match="cannot be sent more invitations now"):
        _invite(services, dave, "/E", bob, "editor")
    declined = sharing.decline(services, bob, DeclineRequest(from_email=alice.email.upper()))
    assert [(i.name, i.access) for i in declined.invitations] == [("A", "editor"), ("B", "viewer")]
    assert [i.name for i in sharing.invitations(services, bob).invitations] == ["D"]
    _invite(services, dave, "/E", bob, "editor")
    _invite(services, alice, "/C", bob, "editor")
    assert [i.name for i in sharing.invitations(services, bob).invitations] == ["D", "E", "C"]


def test_an_accept_never_names_what_the_owner_deleted_alone(
    services: Services, alice: Principal, bob: Principal
) -> None:
    """What the owner deleted alone in the folder goes to her own trash as someone joins;
    when it cannot (its path would be too long in her own folders), the invitee's refusal
    must not name it (the file this rule hides from them), and the owner is told what to do
    when she shares again. The invitation waits meanwhile."""
    team = "/" + "T" * 200  # a long mount point: what fits inside may not fit in her root
    deep = "/" + "/".join(["d" * 200] * 9) + "/salaries-of-carol-" + "x" * 80 + ".xlsx"
    put_file(services, alice, f"{team}/readme", b"r")
    ns_id = _invite(services, alice, team, bob, "editor")
    put_file(services, alice, team + deep, b"secret")
    files.delete(services, alice, DeleteRequest(path=team + deep))
    with pytest.raises(Unprocessable) as refused:
        _accept(services, bob, ns_id)
    assert "salaries" not in str(refused.value) and "d" * 200 not in str(refused.value)
    assert f"{alice.email} must first deal with files they deleted" in str(refused.value)
    assert [i.ns_id for i in sharing.invitations(services, bob).invitations] == [ns_id]
    with pytest.raises(Unprocessable, match=r"x\.xlsx' in its trash would be longer"):
        _invite(services, alice, team, bob, "editor")
    assert _root_names(services, bob) == []


def test_an_accept_past_max_shared_folders_keeps_the_invitation(
    services: Services, alice: Principal, bob: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sharing, "MAX_SHARED_FOLDERS", 1)
    put_file(services, alice, "/A/x", b"x")
    put_file(services, alice, "/B/x", b"x")
    share_with(services, alice, "/A", bob)
    ns_id = _invite(services, alice, "/B", bob, "editor")
    with pytest.raises(Unprocessable, match="already has 1 shared folders"):
        _accept(services, bob, ns_id)
    assert [i.ns_id for i in sharing.shares(services, bob).invitations] == [ns_id]
    files.delete(services, bob, DeleteRequest(path="/A"))  # leaves A
    _accept(services, bob, ns_id)
    assert get_file(services, bob, "/B/x") == b"x"


def test_an_accept_waiting_for_the_invitations_withdrawal_is_404(
    services: Services, alice: Principal, bob: Principal, race: Race
) -> None:
    """The withdrawal holds the shared namespace; the accept waits for it, then finds no
    invitation, and mounts nothing."""
    put_file(services, alice, "/Team/a", b"a")
    ns_id = _invite(services, alice, "/Team", bob, "editor")
    withdrawn, accepted = race(
        "remove_invite",
        lambda: sharing.unshare(services, alice, UnshareRequest(path="/Team", email=bob.email)),
        lambda: _accept(services, bob, ns_id),
    )
    assert not isinstance(withdrawn, Exception), withdrawn
    assert isinstance(accepted, NotFound), accepted
    assert _root_names(services, bob) == []
    assert sharing.shares(services, alice).shares[0].members[1:] == []
