"""The queries of the metadata service, one method each, over one open transaction."""

from __future__ import annotations

from typing import Any

import psycopg

NOTIFY_CHANNEL = "tessera_changes"


class Store:
    """Data access inside one transaction (from `Database.transaction()`)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
