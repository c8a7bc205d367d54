"""Is the key service's secret for each key version the one blocks were stored under?

A block's key derives from its key version's secret (DESIGN §3). Another secret under the
same version decrypts nothing: every download fails authentication, maintenance judges
every block it reads damaged and quarantines it, and uploads are encrypted under keys the
right secret cannot read back. The secrets live apart from the metadata (the local key
file, KMS-encrypted parameters), so they can be swapped without it: a state dir's
`keys.json` copied from another, two state dirs over one `DATABASE_URL`, a parameter put
again by hand. So the metadata records each version's fingerprint the first time a check
meets it, and later checks compare: every version at once (`check_block_keys`) at the
local cloud's start and `tessera admin run` before they serve or judge a block, and on
AWS at the cold start of each maintenance function that decodes blocks and in the
deploy's migrate function; each version as it is first loaded (`guard_block_keys`) in
the processes that hand out block keys: the AWS API function, and the local cloud after
its start (a rotation while it runs).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from tessera.blocks import key_fingerprint
from tessera.domain.errors import Unavailable
from tessera.metadata.db import Database
from tessera.ports import KeyRefused, KeyService

log = logging.getLogger(__name__)

#: What a request answers while the block keys are refused (the details go to the log).
KEYS_REFUSED = (
    "the server's block keys do not match its database, so no block can be stored or read"
    " now; an operator must put back the key parameters it was used with (docs/deploy.md)"
)
#: How long a client waits before it asks again: an operator's fix takes minutes.
KEYS_REFUSED_RETRY_S = 300


class BlockKeysMismatch(Exception):
    """The key service's secrets are not the ones the database's blocks were stored under."""


class BlockKeysRefused(Unavailable, KeyRefused):
    """A request's answer while the block keys are refused: 503, remembered by the key
    service for `KeyService.REFUSED_S`."""


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
    _compare(db, keys.fingerprints(), every_version=True)


def check_block_key(db: Database, version: int, secret: bytes) -> None:
    """`check_block_keys` for one version's secret, as a process first loads it: compared
    with its record, or recorded when the version is new; raise `BlockKeysMismatch`."""
    _compare(db, {version: key_fingerprint(secret)}, every_version=False)


def guard_block_keys(db: Database, keys: KeyService) -> None:
    """Have each secret `keys` loads from now on checked (`check_block_key`) before any
    block key under it is handed out. A refused one raises `Unavailable` (503, what
    differs logged) and is loaded and checked again at the next request, so keys put back
    are taken up without a restart.

    The AWS API function checked nothing: after a key parameter was put again by hand, it
    handed out block keys under the new secret (uploads no one could read once the right
    one was put back) until a maintenance function's start refused."""

    def vouch(version: int, secret: bytes) -> None:
        try:
            check_block_key(db, version, secret)
        except BlockKeysMismatch as refused:
            log.error("block keys refused: %s", refused)
            raise BlockKeysRefused(KEYS_REFUSED, retry_after=KEYS_REFUSED_RETRY_S) from refused

    keys.watch(vouch)


def _compare(db: Database, found: Mapping[int, bytes], *, every_version: bool) -> None:
    """Compare the fingerprints `found` with the records and record the new ones; with
    `every_version`, `found` is all the key service has, and a recorded version it lacks
    is missing. The common case, every fingerprint as recorded, takes no lock: the cold
    starts of a scale-out each checked under the one global lock, in turn."""
    with db.transaction() as store:
        recorded = store.key_fingerprints(lock=False)
    if all(recorded.get(v, (None,))[0] == fp for v, fp in found.items()) and (
        not every_version or recorded.keys() <= found.keys()
    ):
        return
    with db.transaction() as store:
        recorded = store.key_fingerprints()
        changed = sorted(v for v, (fp, _) in recorded.items() if v in found and found[v] != fp)
        missing = sorted(v for v in recorded if v not in found) if every_version else []
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
