"""The local cloud (DESIGN §2): the whole of Tessera on one machine.

`LocalCloud(state_dir, port=0)` starts PostgreSQL, the local adapters, the API and the
gateway in-process (a context manager returning the base URL); `tessera local up` runs the
same thing in the foreground. Heavy imports happen on first use of `LocalCloud`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tessera.local.cloud import LocalCloud

__all__ = ["LocalCloud"]


def __getattr__(name: str) -> Any:
    if name == "LocalCloud":
        from tessera.local.cloud import LocalCloud

        return LocalCloud
    raise AttributeError(name)
