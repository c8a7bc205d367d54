"""PostgreSQL access (psycopg 3 + psycopg_pool): the only home of SQL in Tessera's server.

- `migrate(conninfo)` applies `migrations/NNN_name.sql` in order (tracked, advisory-locked).
- `Database(conninfo)` pools connections; `with db.transaction() as store:` gives a `Store`
  whose methods are the queries the domain needs.
- Commits call `pg_notify(NOTIFY_CHANNEL, '{"ns_id": N, "seq": S}')` inside their
  transaction, so LISTENers hear of a change exactly when it becomes visible.
"""

from tessera.metadata.db import Database
from tessera.metadata.migrate import migrate
from tessera.metadata.store import NOTIFY_CHANNEL, Store

__all__ = ["NOTIFY_CHANNEL", "Database", "Store", "migrate"]
