"""Local identity: users in PostgreSQL (argon2id) and an ES256 JWT issuer (Cognito's job on AWS).

Access tokens carry what a Cognito access token carries and API Gateway's authorizer checks:
`iss`, `aud`, `sub` (the user_id), `email`, `iat`, `exp` (1 h), `token_use="access"`.
Refresh tokens are signed by the same key for a different audience (`<aud>:refresh`) and
live 30 days, so neither kind is accepted where the other is expected. A refresh answers
with a new access token and the same refresh token, as Cognito does: a session ends 30
days after its sign-in however often it refreshes (a new refresh token each time had let
a stolen one renew itself for ever), or when it is signed out (`POST /v1/auth/revoke`:
`tessera logout`), or the password is set anew (`tessera local passwd`: a refresh token
carries the user's sessions generation, `gen`, which that moves on), whichever comes
first. An access token lives out its hour either way, as Cognito's do behind API
Gateway's authorizer.
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tessera.adapters.local.secret_files import load_or_create
from tessera.adapters.tokens import TokenPair, verified_claims
from tessera.domain.errors import (
    BadRequest,
    Conflict,
    NotFound,
    TooManyRequests,
    Unauthorized,
    Unprocessable,
)
from tessera.metadata import local_users
from tessera.metadata.db import unavailable_on_db_errors
from tessera.ports import Identity, Principal, SignInOrigin

ISSUER = "tessera-local"
AUDIENCE = "tessera"
ACCESS_TTL = 3600
REFRESH_TTL = 30 * 24 * 3600
MIN_PASSWORD = 8
#: Longer passwords are refused (422) when set and fail (401) at sign-in without being hashed:
#: far beyond any passphrase, and a bound on what an anonymous caller makes argon2 read.
MAX_PASSWORD = 1024
#: RFC 5321's limit on an address; a longer one is refused before any other work.
MAX_EMAIL = 254
#: Memory the password checks running at once may take: argon2id takes `memory_cost` KiB
#: (64 MiB with the library's parameters) per check, so 4 checks, fewer on fewer cores.
HASH_MEMORY_BUDGET_KIB = 256 * 1024
_ALGORITHM = "ES256"


def _new_signing_key() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class JwtIssuer(Identity):
    """Issues and verifies ES256 tokens with a private key kept 0600 in the state dir."""

    def __init__(
        self,
        key_path: str | os.PathLike[str],
        *,
        issuer: str = ISSUER,
        audience: str = AUDIENCE,
        access_ttl: int = ACCESS_TTL,
        refresh_ttl: int = REFRESH_TTL,
    ) -> None:
        pem = load_or_create(Path(key_path), _new_signing_key)
        private = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path} does not hold an EC private key")
        self._private = private
        self._public = private.public_key()
        self.issuer, self.audience = issuer, audience
        self.access_ttl, self.refresh_ttl = access_ttl, refresh_ttl

    def _encode(
        self,
        principal: Principal,
        audience: str,
        token_use: str,
        ttl: int,
        **extra: object,
    ) -> str:
        now = int(time.time())
        claims = {
            **extra,
            "iss": self.issuer,
            "aud": audience,
            "sub": principal.user_id,
            "email": principal.email,
            "iat": now,
            "exp": now + ttl,
            "token_use": token_use,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._private, algorithm=_ALGORITHM)

    def issue(self, principal: Principal, generation: int = 0) -> TokenPair:
        """A fresh access + refresh token pair for `principal` (a sign-in), its session
        under the user's sessions `generation` (`LocalUsers.authenticate`)."""
        refresh = self._encode(
            principal, f"{self.audience}:refresh", "refresh", self.refresh_ttl, gen=generation
        )
        return self.refreshed(principal, refresh)

    def refreshed(self, principal: Principal, refresh_token: str) -> TokenPair:
        """A fresh access token for `principal` beside `refresh_token`, returned unchanged:
        the session keeps the expiry of its sign-in."""
        return TokenPair(
            access_token=self._encode(principal, self.audience, "access", self.access_ttl),
            refresh_token=refresh_token,
            expires_in=self.access_ttl,
        )

    def _decode(self, token: str, audience: str, token_use: str) -> dict[str, Any]:
        claims = verified_claims(
            token,
            lambda _: self._public,
            algorithm=_ALGORITHM,
            issuer=self.issuer,
            require=["exp", "iat", "iss", "aud", "sub"],
            audience=audience,
        )
        if claims.get("token_use") != token_use or not isinstance(claims.get("email"), str):
            raise Unauthorized(f"not an {token_use} token")
        return claims

    def verify(self, token: str) -> Principal:
        """The caller of a valid access token; `Unauthorized` for anything else."""
        return _principal(self._decode(token, self.audience, "access"))

    def verify_refresh(self, token: str) -> RefreshSession:
        """The session of a valid refresh token; `Unauthorized` for anything else."""
        claims = self._decode(token, f"{self.audience}:refresh", "refresh")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise Unauthorized("not a refresh token")
        generation = claims.get("gen", 0)  # none: signed in before generations
        if not isinstance(generation, int) or isinstance(generation, bool):
            raise Unauthorized("not a refresh token")
        expires_at = datetime.fromtimestamp(int(claims["exp"]), UTC)
        return RefreshSession(_principal(claims), jti, expires_at, generation)


@dataclass(frozen=True)
class RefreshSession:
    """What a refresh token names: its user, its id, when it expires, and the user's
    sessions generation it was signed in under."""

    principal: Principal
    jti: str
    expires_at: datetime
    generation: int


@dataclass(frozen=True)
class SignedIn:
    """A user whose credentials checked, and their sessions generation now."""

    principal: Principal
    generation: int


def _principal(claims: Mapping[str, Any]) -> Principal:
    return Principal(user_id=str(claims["sub"]), email=str(claims["email"]))


def _is_utf8(text: str) -> bool:
    """False for a str with a lone surrogate (JSON's `"\\ud800"`): neither argon2 nor
    PostgreSQL takes one, and they would fail with a `UnicodeEncodeError` (a 500)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def normalize_email(email: str) -> str:
    """The case-folded, trimmed form users are stored and looked up under."""
    cleaned = email.strip().casefold()
    local, at, domain = cleaned.partition("@")
    if (
        not at
        or not local
        or not domain
        or len(cleaned) > MAX_EMAIL
        or any(c.isspace() for c in cleaned)
        or not cleaned.isprintable()  # NUL and other control characters
        or not _is_utf8(cleaned)
    ):
        raise Unprocessable(f"not an email address: {email[:MAX_EMAIL]!r}")
    return cleaned


def password_can_match(password: str) -> bool:
    """Whether `password` could be a stored one (`add` refuses the others): when not, a
    sign-in fails without hashing it."""
    return len(password) <= MAX_PASSWORD and _is_utf8(password)


class LocalUsers:
    """The local user directory: create users, check passwords (argon2id).

    Sign-ins check passwords `hash_slots` at a time (by default as many as there are cores,
    within `HASH_MEMORY_BUDGET_KIB`): each argon2id check takes 64 MiB and ~0.3 s of a core,
    so unbounded concurrent sign-ins — which need no account — took the gateway past 1.4 GiB.
    A sign-in that finds no free slot within `hash_wait_s` gets 429 with Retry-After rather
    than waiting on: it waits in one of the gateway's worker threads, which the API shares.
    """

    def __init__(
        self, conninfo: str, *, hash_slots: int | None = None, hash_wait_s: float = 1.0
    ) -> None:
        self.conninfo = conninfo
        self._hasher = PasswordHasher()  # argon2id with the library's current parameters
        self._dummy_hash = self._hasher.hash("not-a-real-password")
        if hash_slots is None:
            by_memory = HASH_MEMORY_BUDGET_KIB // self._hasher.memory_cost
            hash_slots = max(1, min(os.cpu_count() or 1, by_memory))
        self._hash_slots = threading.BoundedSemaphore(hash_slots)
        self.hash_wait_s = hash_wait_s

    @contextmanager
    def _hash_slot(self) -> Iterator[None]:
        """Hold one of the password-check slots; `TooManyRequests` when none frees up soon."""
        if not self._hash_slots.acquire(timeout=self.hash_wait_s):
            raise TooManyRequests("too many sign-ins at once; try again shortly", 1)
        try:
            yield
        finally:
            self._hash_slots.release()

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection for one call; a database outage is `Unavailable` (503 + Retry-After
        at the token endpoint), not a 500."""
        with unavailable_on_db_errors(), psycopg.connect(self.conninfo) as conn:
            yield conn

    def add(self, email: str, password: str) -> Principal:
        """Create a user; `Conflict` when the email is taken (found before the password is
        hashed: the demo user is added at every start of the local cloud)."""
        address = normalize_email(email)
        _check_new_password(password)
        taken = Conflict(f"a user with email {address} already exists")
        with self._connection() as conn:
            if local_users.find_by_email(conn, address) is not None:
                raise taken
            user_id = local_users.insert_user(conn, address, self._hasher.hash(password))
        if user_id is None:  # added meanwhile
            raise taken
        return Principal(user_id=str(user_id), email=address)

    def reset_password(self, email: str, password: str) -> Principal:
        """Set a user's password anew (`tessera local passwd`: a lost one, or one that
        leaked) and sign out every session begun before; `NotFound` for no such user."""
        address = normalize_email(email)
        _check_new_password(password)
        with self._connection() as conn:
            found = local_users.find_by_email(conn, address)
            if found is None:
                raise NotFound(f"no user with email {address}")
            local_users.reset_password(conn, found[0], self._hasher.hash(password))
        return Principal(user_id=str(found[0]), email=address)

    def authenticate(self, email: str, password: str) -> SignedIn:
        """The user with these credentials; `Unauthorized` (same message) otherwise;
        `TooManyRequests` when the password-check slots stay busy."""
        if not password_can_match(password):
            raise Unauthorized("wrong email or password")
        try:
            address = normalize_email(email)
        except Unprocessable:
            address = ""
        # the slot before the connection: a waiting sign-in holds no database connection
        with self._hash_slot(), self._connection() as conn:
            found = local_users.find_by_email(conn, address) if address else None
            # hash even for unknown users, so timing does not reveal who has an account
            stored = found[1] if found else self._dummy_hash
            try:
                self._hasher.verify(stored, password)
                ok = found is not None
            except (VerificationError, InvalidHashError):
                ok = False
            if not ok or found is None:
                raise Unauthorized("wrong email or password")
            if self._hasher.check_needs_rehash(stored):
                local_users.set_password(conn, found[0], self._hasher.hash(password))
        return SignedIn(Principal(user_id=str(found[0]), email=address), found[2])

    def get(self, user_id: str) -> Principal | None:
        """The user `user_id`, or None when there is no such user."""
        try:
            uid = uuid.UUID(user_id)
        except ValueError:
            return None
        with self._connection() as conn:
            email = local_users.find_by_id(conn, uid)
        return None if email is None else Principal(user_id=str(uid), email=email)

    def session_user(self, session: RefreshSession) -> Principal:
        """The user a refresh token's session still stands for; `Unauthorized` when it was
        signed out or the user is gone."""
        with self._connection() as conn:
            if local_users.token_revoked(conn, session.jti):
                raise Unauthorized("this session was signed out; sign in again")
            uid = uuid.UUID(session.principal.user_id)
            generation = local_users.sessions_generation(conn, uid)
            if generation is not None and session.generation < generation:
                raise Unauthorized(
                    "the password was changed since this session began; sign in again"
                )
        current = self.get(session.principal.user_id)
        if current is None:
            raise Unauthorized("the user no longer exists")
        return current

    def revoke(self, session: RefreshSession) -> None:
        """Sign a refresh token's session out: its refresh grant is refused from now on."""
        with self._connection() as conn:
            local_users.revoke_token(conn, session.jti, session.expires_at)


def _check_new_password(password: str) -> None:
    """`Unprocessable` for a password a user may not be given."""
    if len(password) < MIN_PASSWORD or not password_can_match(password):
        raise Unprocessable(
            f"a password needs at least {MIN_PASSWORD} and at most {MAX_PASSWORD} "
            "characters of Unicode text"
        )


class LoginThrottle:
    """Refuses password attempts for an email after `max_failures` failures in `window_s`.

    What Cognito does against password guessing, in memory (one local gateway process).
    Checked before the password is hashed, so a guessing loop costs no argon2 time. An
    attempt counts as a failure from the moment it is let through until it succeeds (or
    is given up unjudged): checked, then recorded once judged, 8 guesses at once (the
    sign-in threads) all passed the check while the first were hashed.
    Anyone can fail a sign-in for any address, so at most `max_keys` addresses are kept: the
    one that failed least recently goes first. Failures cost a password check each (at most
    a few a second, see `LocalUsers`), so filling it takes far longer than `window_s`: what
    goes has expired anyway, and a lockout cannot be flushed by failing for other addresses.
    """

    def __init__(
        self, max_failures: int = 5, window_s: float = 60.0, max_keys: int = 10_000
    ) -> None:
        self.max_failures, self.window_s, self.max_keys = max_failures, window_s, max_keys
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures.get(key, deque())
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        return failures

    def attempt(self, key: str) -> float:
        """Let an attempt for `key` through, counted as a failure until it succeeds; its
        stamp (for `abandon`). `TooManyRequests` (with Retry-After) while `key` is locked
        out."""
        now = time.monotonic()
        with self._lock:
            failures = self._recent(key, now)
            if len(failures) >= self.max_failures:
                wait = failures[0] + self.window_s - now
                raise TooManyRequests("too many failed sign-ins; try again later", math.ceil(wait))
            failures.append(now)
            self._failures[key] = failures
            self._failures.move_to_end(key)
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)
        return now

    def abandon(self, key: str, stamp: float) -> None:
        """Uncount an attempt that was never judged (no password-check slot, no database)."""
        with self._lock:
            failures = self._failures.get(key)
            if failures is not None and stamp in failures:
                failures.remove(stamp)
                if not failures:
                    del self._failures[key]

    def succeeded(self, key: str) -> None:
        """Forget the failures of `key`."""
        with self._lock:
            self._failures.pop(key, None)


class LocalIdentity:
    """The token endpoint: password and refresh-token grants over `LocalUsers` + `JwtIssuer`."""

    def __init__(
        self, users: LocalUsers, issuer: JwtIssuer, throttle: LoginThrottle | None = None
    ) -> None:
        self.users, self.issuer = users, issuer
        self.throttle = throttle or LoginThrottle()

    def token(self, body: Mapping[str, Any], origin: SignInOrigin | None = None) -> TokenPair:
        """Answer `POST /v1/auth/token` with `{"email","password"}` or `{"refresh_token"}`
        (`origin` unused: the gateway throttles sign-ins per address itself)."""
        refresh = body.get("refresh_token")
        if isinstance(refresh, str):
            current = self.users.session_user(self.issuer.verify_refresh(refresh))
            return self.issuer.refreshed(current, refresh)
        email, password = body.get("email"), body.get("password")
        if not isinstance(email, str) or not isinstance(password, str):
            raise BadRequest('send {"email", "password"} or {"refresh_token"}')
        key = email.strip().casefold()
        if len(key) > MAX_EMAIL:
            raise Unprocessable(f"an email address has at most {MAX_EMAIL} characters")
        # refused before the throttle: costs no hashing, and uncounted, floods of these
        # cannot push other addresses' failures out of it
        if not password_can_match(password):
            raise Unauthorized("wrong email or password")
        stamp = self.throttle.attempt(key)
        try:
            signed_in = self.users.authenticate(email, password)
        except Unauthorized:
            raise  # counted already
        except BaseException:
            self.throttle.abandon(key, stamp)
            raise
        self.throttle.succeeded(key)
        return self.issuer.issue(signed_in.principal, signed_in.generation)

    def revoke(self, body: Mapping[str, Any]) -> None:
        """Answer `POST /v1/auth/revoke` with `{"refresh_token"}`: sign its session out. A
        token that is not a valid one needs no signing out (RFC 7009: no error either)."""
        refresh = body.get("refresh_token")
        if not isinstance(refresh, str) or not refresh:
            raise BadRequest('send {"refresh_token"}')
        try:
            session = self.issuer.verify_refresh(refresh)
        except Unauthorized:
            return
        self.users.revoke(session)
