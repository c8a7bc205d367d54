"""The local token endpoint's lockout per email (`identity.LoginThrottle`)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tessera.adapters.local import JwtIssuer
from tessera.adapters.local.identity import LocalIdentity, LoginThrottle
from tessera.domain.errors import TesseraError, TooManyRequests, Unauthorized


def test_it_keeps_at_most_max_keys_addresses_dropping_the_least_recently_failed() -> None:
    """Anyone may fail a sign-in for any address: without a bound, every made-up address
    (up to the body limit long) stayed in memory for good."""
    throttle = LoginThrottle(max_failures=2, max_keys=3)
    for _ in range(2):
        throttle.attempt("victim@example.com")
    for n in range(2):
        throttle.attempt(f"made-up-{n}@example.com")
    with pytest.raises(TooManyRequests):  # the victim's failures made it the most recent
        throttle.attempt("victim@example.com")
    throttle.attempt("made-up-1@example.com")
    for n in range(2, 4):
        throttle.attempt(f"made-up-{n}@example.com")
    assert len(throttle._failures) == 3
    throttle.attempt("victim@example.com")  # dropped as the least recently failed


def test_attempts_count_before_their_verdict() -> None:
    """Checked first and recorded once judged, 8 guesses at once (the sign-in threads) all
    passed the check while the first were still hashed: ~12 a minute, not 5."""
    throttle = LoginThrottle(max_failures=5)
    for _ in range(5):  # none judged yet
        throttle.attempt("victim@example.com")
    with pytest.raises(TooManyRequests):
        throttle.attempt("victim@example.com")


def test_a_success_or_an_unjudged_attempt_keeps_nothing() -> None:
    throttle = LoginThrottle()
    stamp = throttle.attempt("a@example.com")
    throttle.abandon("a@example.com", stamp)  # no password-check slot: no verdict
    throttle.attempt("b@example.com")
    throttle.succeeded("b@example.com")
    assert not throttle._failures


def test_guesses_at_once_for_one_email_are_held_to_the_limit(tmp_path: Path) -> None:
    """Ten guesses at once for one email: at most five reach the password check."""
    checked: list[str] = []
    lock = threading.Lock()

    class SlowUsers:
        def authenticate(self, email: str, password: str) -> None:
            with lock:
                checked.append(password)
            time.sleep(0.3)  # an argon2id check
            raise Unauthorized("wrong email or password")

    identity = LocalIdentity(SlowUsers(), JwtIssuer(tmp_path / "jwt.pem"))  # type: ignore[arg-type]

    def guess(n: int) -> int:
        try:
            identity.token({"email": "victim@example.com", "password": f"guess-{n}"})
        except TesseraError as exc:
            return exc.status
        return 200

    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(guess, range(10)))
    assert len(checked) == 5
    assert sorted(statuses) == [401] * 5 + [429] * 5
