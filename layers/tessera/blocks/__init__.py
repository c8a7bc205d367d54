"""The block pipeline (DESIGN §3), shared by the sync client and the server.

Chunk a file with FastCDC (`scan_file`, `iter_chunks`), name blocks by their BLAKE3 hash
(`block_id`, `content_hash`), and store them compressed and encrypted (`encode_block`,
`decode_block`; `encode_file` for a whole file and `encode_many`/`decode_many`, on a thread
per core) under per-block keys
(`derive_block_key`). The byte format is documented in
docs/block-format.md.
"""

from tessera.blocks.chunking import (
    AVG_BLOCK_SIZE,
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    BlockRef,
    FileManifest,
    iter_chunks,
    open_regular,
    scan_file,
)
from tessera.blocks.codec import (
    MAX_STORED_SIZE,
    decode_block,
    decode_many,
    encode_block,
    encode_file,
    encode_many,
    stored_key_version,
    stored_size_limit,
)
from tessera.blocks.errors import (
    BlockError,
    BlockFormatError,
    BlockIntegrityError,
    FileChangedError,
)
from tessera.blocks.ids import (
    block_id,
    content_hash,
    derive_block_key,
    is_block_id,
    key_fingerprint,
)
from tessera.blocks.workers import default_workers

__all__ = [
    "AVG_BLOCK_SIZE",
    "MAX_BLOCK_SIZE",
    "MAX_STORED_SIZE",
    "MIN_BLOCK_SIZE",
    "BlockError",
    "BlockFormatError",
    "BlockIntegrityError",
    "BlockRef",
    "FileChangedError",
    "FileManifest",
    "block_id",
    "content_hash",
    "decode_block",
    "decode_many",
    "default_workers",
    "derive_block_key",
    "encode_block",
    "encode_file",
    "encode_many",
    "is_block_id",
    "iter_chunks",
    "key_fingerprint",
    "open_regular",
    "scan_file",
    "stored_key_version",
    "stored_size_limit",
]
