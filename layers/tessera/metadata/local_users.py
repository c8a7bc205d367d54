"""SQL for the local cloud's user table (`local_users`, migration 050) and its signed-out
refresh tokens (`local_revoked_tokens`, migration 052)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import psycopg


def insert_user(conn: psycopg.Connection[Any], email: str, password_hash: str) -> uuid.UUID | None:
    """Insert a user; the new user_id, or None when the (case-folded) email is taken."""
    user_id = uuid.uuid4()
    row = conn.execute(
        "INSERT INTO local_users (user_id, email, password_hash) VALUES (%s, %s, %s)"
        " ON CONFLICT (email) DO NOTHING RETURNING user_id",
        (user_id, email, password_hash),
    ).fetchone()
    return None if row is None else user_id


def find_by_email(conn: psycopg.Connection[Any], email: str) -> tuple[uuid.UUID, str, int] | None:
    """(user_id, password_hash, sessions generation) of the user with this case-folded
    email, or None."""
    row = conn.execute(
        "SELECT user_id, password_hash, sessions_generation FROM local_users WHERE email = %s",
        (email,),
    ).fetchone()
    return None if row is None else (row[0], row[1], int(row[2]))


def find_by_id(conn: psycopg.Connection[Any], user_id: uuid.UUID) -> str | None:
    """The email of user `user_id`, or None."""
    row = conn.execute("SELECT email FROM local_users WHERE user_id = %s", (user_id,)).fetchone()
    return None if row is None else str(row[0])


def set_password(conn: psycopg.Connection[Any], user_id: uuid.UUID, password_hash: str) -> None:
    """Replace a user's password hash (argon2 rehash after a parameter change)."""
    conn.execute(
        "UPDATE local_users SET password_hash = %s WHERE user_id = %s", (password_hash, user_id)
    )


def revoke_token(conn: psycopg.Connection[Any], jti: str, expires_at: datetime) -> None:
    """Refuse refresh token `jti` from now on; kept until `expires_at`, when it expires
    anyway (those past it are deleted on the way)."""
    conn.execute("DELETE FROM local_revoked_tokens WHERE expires_at < now()")
    conn.execute(
        "INSERT INTO local_revoked_tokens (jti, expires_at) VALUES (%s, %s)"
        " ON CONFLICT (jti) DO NOTHING",
        (jti, expires_at),
    )


def reset_password(conn: psycopg.Connection[Any], user_id: uuid.UUID, password_hash: str) -> None:
    """Set a user's password anew, and move its sessions generation on: every session
    signed in before is signed out."""
    conn.execute(
        "UPDATE local_users SET password_hash = %s,"
        " sessions_generation = sessions_generation + 1 WHERE user_id = %s",
        (password_hash, user_id),
    )


def sessions_generation(conn: psycopg.Connection[Any], user_id: uuid.UUID) -> int | None:
    """The user's sessions generation (how often the password was set anew): a session
    signed in under an earlier one is signed out. None when there is no such user."""
    row = conn.execute(
        "SELECT sessions_generation FROM local_users WHERE user_id = %s", (user_id,)
    ).fetchone()
    return None if row is None else int(row[0])


def token_revoked(conn: psycopg.Connection[Any], jti: str) -> bool:
    """Whether refresh token `jti` was signed out."""
    row = conn.execute("SELECT 1 FROM local_revoked_tokens WHERE jti = %s", (jti,)).fetchone()
    return row is not None
