"""The classes of Tessera's advisory locks: one home, so no two kinds of lock share one.

PostgreSQL keys a two-part advisory lock by (class, object); each kind of lock hashes its
object (`hashtext`) within its own class. Two kinds that shared a class (the pass locks and
the usage locks did) made a user's writes queue behind a maintenance pass whenever a step's
name and their id hashed alike. The migrations' lock is a one-part key (`migrate._LOCK_ID`),
a key space of its own.
"""

from __future__ import annotations

import enum


@enum.unique
class LockClass(enum.IntEnum):
    """The first key (an int4) of each kind of advisory lock."""

    #: a block's maintenance lock (`MaintenanceTx.lock_block`)
    BLOCK = 0x7E55_0001
    #: a user's usage: their writes that add to it queue (`Store.lock_usage`)
    USAGE = 0x7E55_0002
    #: a maintenance step's pass position (`MaintenanceTx.lock_pass`)
    PASS = 0x7E55_0003
    #: a user's uploads in progress, held to their cap (`Store.lock_pending_uploads`)
    PENDING_UPLOADS = 0x7E55_0004
    #: a user's block reports, held to their hourly budget (`Store.recent_reports`)
    REPORTS = 0x7E55_0005
    #: the block keys' check: starts compare and record one at a time (`Store.key_fingerprints`)
    KEY_CHECK = 0x7E55_0006
    #: a block's pending reports: claimed and settled by one run at a time (`claim_reports`)
    BLOCK_REPORTS = 0x7E55_0007
