"""The demo user's login: made once per pool, never reset, saved privately."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tessera.domain.errors import Conflict
from tessera.local.demo import DEMO_EMAIL, ensure_demo_user


class Pool:
    """A user pool: `create` refuses an email it has."""

    def __init__(self) -> None:
        self.passwords: dict[str, str] = {}

    def create(self, email: str, password: str) -> None:
        if email in self.passwords:
            raise Conflict(f"{email} exists")
        self.passwords[email] = password


def test_a_new_user_gets_a_saved_private_login(tmp_path: Path) -> None:
    pool, path = Pool(), tmp_path / "demo-credentials"
    login = ensure_demo_user(path, pool.create)
    assert login == (DEMO_EMAIL, pool.passwords[DEMO_EMAIL])
    assert path.read_text().split() == list(login)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_existing_user_keeps_its_password_and_saved_login(tmp_path: Path) -> None:
    """A long-lived --aws-endpoint pool already had the user: the new password that was
    never set overwrote the saved one, and the printed login failed."""
    pool, path = Pool(), tmp_path / "demo-credentials"
    first = ensure_demo_user(path, pool.create)
    assert ensure_demo_user(path, pool.create) == first
    assert path.read_text().split() == list(first or ())


def test_a_fresh_pool_gets_a_new_login_saved_over_the_old(tmp_path: Path) -> None:
    """In-process moto starts empty each time: the user is made again, with a new login."""
    path = tmp_path / "demo-credentials"
    old = ensure_demo_user(path, Pool().create)
    fresh = Pool()
    new = ensure_demo_user(path, fresh.create)
    assert new is not None and new != old
    assert new[1] == fresh.passwords[DEMO_EMAIL]
    assert path.read_text().split() == list(new)


def test_an_existing_user_without_a_saved_login_is_not_reset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pool = Pool()
    pool.create(DEMO_EMAIL, "set elsewhere")
    assert ensure_demo_user(tmp_path / "demo-credentials", pool.create) is None
    assert pool.passwords[DEMO_EMAIL] == "set elsewhere"
    assert "not resetting its password" in caplog.text
