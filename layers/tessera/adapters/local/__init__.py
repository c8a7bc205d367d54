"""Local adapters of the ports (DESIGN §2): everything on one machine, no AWS."""

from tessera.adapters.local.block_store import FilesystemBlockStore, NotRestored
from tessera.adapters.local.change_feed import CHANNEL, PostgresChangeFeed
from tessera.adapters.local.identity import JwtIssuer, LocalIdentity, LocalUsers
from tessera.adapters.local.key_file import KeyFileKeyService
from tessera.adapters.local.secret_files import InsecureSecretFile
from tessera.adapters.tokens import TokenPair

__all__ = [
    "CHANNEL",
    "FilesystemBlockStore",
    "InsecureSecretFile",
    "JwtIssuer",
    "KeyFileKeyService",
    "LocalIdentity",
    "LocalUsers",
    "NotRestored",
    "PostgresChangeFeed",
    "TokenPair",
]
