"""Is the key service's secret for each key version the one blocks were stored under?

A block's key derives from its key version's secret (DESIGN §3). Another secret under the
same version decrypts nothing: every download fails authentication, maintenance judges
every block it reads damaged and quarantines it, and uploads are encrypted under keys the
right secret cannot read back. The secrets live apart from the metadata (the local key
file, KMS-encrypted parameters), so they can be swapped without it: a state dir's
`keys.json` copied from another, two state dirs over one `DATABASE_URL`, a parameter put
again by hand. So the metadata records each version's fingerprint the first time a check
meets it, and later checks compare: the local cloud's start and `tessera admin run`
before they serve or judge a block, and on AWS the cold start of each maintenance
function that decodes blocks and the deploy's migrate function. The AWS API functions do
not check (a query at every cold start): after a parameter put again by hand, they hand
out keys under it until a decoding function's next start refuses and alarms
(docs/maintenance.md).
"""

from __future__ import annotations

from tessera.metadata.db import Database
from tessera.ports import KeyService


class BlockKeysMismatch(Exception):
    """The key service's secrets are not the ones the database's blocks were stored under."""


def check_block_keys(db: Database, keys: KeyService) -> None:
    """Compare each key version's secret with the fingerprint recorded for it; raise
    `BlockKeysMismatch`, recording nothing, when one differs (or is missing from the key
    service) while blocks are stored under it. A version no block uses may change (a new
    key file over a database whose blocks gc collected): its record is replaced. Then
    record the versions met for the first time.

    Compared before anything is recorded: recorded first, a refused start's extra
    versions were kept, and the right key file, put back, was then refused for lacking
    them. Checks run one at a time (`Store.key_fingerprints` locks): two starts with
    different secrets, at once, were both let in.

    Left: a version no block uses yet may change while a process still holds the old
    secret (two state dirs over one database, both running): its later blocks are then
    unreadable to the other, until its restart is refused."""
    found = keys.fingerprints()
    with db.transaction() as store:
        recorded = store.key_fingerprints()
        changed = sorted(v for v, (fp, _) in recorded.items() if v in found and found[v] != fp)
        missing = sorted(v for v in recorded if v not in found)
        problems = [
            f"key version {v}'s secret is not the one recorded on {recorded[v][1]:%Y-%m-%d}"
            for v in changed
            if store.key_version_in_use(v)
        ] + [
            f"key version {v} (recorded on {recorded[v][1]:%Y-%m-%d}) is missing"
            for v in missing
            if store.key_version_in_use(v)
        ]
        if not problems:
            store.forget_key_fingerprints(missing)
            store.set_key_fingerprints(
                {v: fp for v, fp in found.items() if v not in recorded or v in changed}
            )
    if problems:
        raise BlockKeysMismatch(
            f"the block keys do not match this database: {'; '.join(problems)}. Blocks"
            " stored under those versions cannot be read with these keys, and nothing was"
            " served or checked. Put back the key file (or key parameters) this database"
            " was used with."
        )
