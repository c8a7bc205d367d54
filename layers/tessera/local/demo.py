"""The demo user that `tessera local up --demo` prints a login for, in either backend."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from pathlib import Path

from tessera.adapters.local.secret_files import write_private
from tessera.domain.errors import Conflict

log = logging.getLogger(__name__)

DEMO_EMAIL = "demo@tessera.local"


def ensure_demo_user(path: Path, create: Callable[[str, str], object]) -> tuple[str, str] | None:
    """The demo user's (email, password), its login saved in `path`.

    `create(email, password)` makes the user, or raises Conflict when it exists. A new user
    (the first start, or a fresh pool: in-process moto starts empty each time) gets a new
    password, saved. An existing one keeps its password, never reset: the saved login is
    returned, or None (with a warning) when it was not saved here.
    """
    password = "Demo-" + secrets.token_urlsafe(12)  # Cognito's policy wants a symbol
    try:
        create(DEMO_EMAIL, password)
    except Conflict:
        if not path.exists():
            log.warning("%s exists but %s is missing; not resetting its password", DEMO_EMAIL, path)
            return None
        email, saved = path.read_text().split()[:2]
        return email, saved
    write_private(path, f"{DEMO_EMAIL}\n{password}\n".encode(), exclusive=False)
    return DEMO_EMAIL, password
