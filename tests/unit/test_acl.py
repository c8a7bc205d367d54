"""Role rules (tessera.domain.acl)."""

from __future__ import annotations

import pytest

from tessera.domain.acl import Action, allows, require
from tessera.domain.errors import Forbidden


@pytest.mark.parametrize(
    ("access", "read", "write", "share"),
    [
        ("viewer", True, False, False),
        ("editor", True, True, False),
        ("owner", True, True, True),
        ("stranger", False, False, False),
    ],
)
def test_roles(access: str, read: bool, write: bool, share: bool) -> None:
    assert allows(access, Action.READ) is read
    assert allows(access, Action.WRITE) is write
    assert allows(access, Action.SHARE) is share


def test_require_raises_403_naming_the_access() -> None:
    require("editor", Action.WRITE, "/Team")
    with pytest.raises(Forbidden) as info:
        require("viewer", Action.WRITE, "/Team")
    assert info.value.status == 403
    assert "'viewer'" in info.value.message and "/Team" in info.value.message
