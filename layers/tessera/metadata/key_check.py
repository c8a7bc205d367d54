"""Is the key service's secret for each key version the one blocks were stored under?

A block's key derives from its key version's secret (DESIGN §3). Another secret under the
same version decrypts nothing: every download fails authentication, maintenance judges
every block it reads damaged and quarantines it, and uploads are encrypted under keys the
right secret cannot read back. The secrets live apart from the metadata (the local key
file, KMS-encrypted parameters), so they can be swapped without it: a state dir's
`keys.json` copied from another, two state dirs over one `DATABASE_URL`, a parameter put
again by hand. So the metadata records each version's fingerprint the first time a process
meets it, and every later start compares before it serves or judges a block.
"""

from __future__ import annotations

from tessera.metadata.db import Database
from tessera.ports import KeyService


class BlockKeysMismatch(Exception):
    """The key service's secrets are not the ones the database's blocks were stored under."""


def check_block_keys(db: Database, keys: KeyService) -> None:
    """Record the fingerprint of each key version met for the first time; raise
    `BlockKeysMismatch` when a version's secret differs from the one recorded, or a
    recorded version is missing from the key service."""
    found = keys.fingerprints()
    with db.transaction() as store:
        recorded = store.record_key_fingerprints(found)
    wrong = sorted(v for v, (fp, _) in recorded.items() if v in found and found[v] != fp)
    missing = sorted(v for v in recorded if v not in found)
    if not wrong and not missing:
        return
    problems = [
        f"key version {v}'s secret is not the one recorded on {recorded[v][1]:%Y-%m-%d}"
        for v in wrong
    ] + [f"key version {v} (recorded on {recorded[v][1]:%Y-%m-%d}) is missing" for v in missing]
    raise BlockKeysMismatch(
        f"the block keys do not match this database: {'; '.join(problems)}. Blocks stored"
        " under those versions cannot be read with these keys, and nothing was served or"
        " checked. Put back the key file (or key parameters) this database was used with."
    )
