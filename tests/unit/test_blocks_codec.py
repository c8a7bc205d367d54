"""The block codec and block keys of `tessera.blocks` (docs/block-format.md)."""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Iterator

import pytest
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.blocks import (
    MAX_BLOCK_SIZE,
    BlockError,
    BlockFormatError,
    BlockIntegrityError,
    block_id,
    codec,
    decode_block,
    decode_many,
    derive_block_key,
    encode_block,
    encode_many,
    stored_key_version,
    stored_size_limit,
)
from tessera.blocks.memory import uninitialized_bytearray
from tessera.domain.errors import TesseraError
from tessera.ports import KeyService
from tests.corruption import with_last_byte_flipped

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
TEXT = b"Tessera keeps a folder in sync across devices and people.\n" * 2000
RANDOM = os.urandom(70_000)

plaintexts = st.one_of(
    st.binary(max_size=5000),
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=40), st.integers(1, 3000)),
)
key_versions = st.integers(0, 2**32 - 1)


@settings(max_examples=150, deadline=None)
@given(data=plaintexts, key=st.binary(min_size=32, max_size=32), version=key_versions)
def test_round_trip(data: bytes, key: bytes, version: int) -> None:
    bid = block_id(data)
    stored = encode_block(data, bid, key, version)
    assert decode_block(stored, bid, key) == data
    assert stored_key_version(stored) == version
    assert len(stored) <= stored_size_limit(len(data))  # what the server signs URLs for


def test_round_trip_of_a_max_size_block_and_memoryview_input() -> None:
    data = os.urandom(MAX_BLOCK_SIZE)
    bid = block_id(data)
    stored = encode_block(memoryview(data), bid, KEY, 1)
    assert decode_block(memoryview(stored), bid, KEY) == data
    assert decode_block(bytearray(stored), bid, KEY) == data


def test_layout_of_a_stored_block() -> None:
    bid = block_id(RANDOM)
    stored = encode_block(RANDOM, bid, KEY, 0x01020304)
    assert stored[:4] == b"TBLK"
    assert stored[4] == 1  # format version
    assert stored[5] == 0  # flags: stored raw
    assert stored[6:10] == bytes([1, 2, 3, 4])  # key version, big-endian
    assert len(stored) == 4 + 1 + 1 + 4 + 12 + len(RANDOM) + 16
    # The documented construction, rebuilt independently: AAD = header + block id.
    aad = stored[:10] + bid.encode("ascii")
    assert AESGCM(KEY).decrypt(stored[10:22], stored[22:], aad) == RANDOM


def test_incompressible_data_is_stored_raw_and_compressible_data_compressed() -> None:
    raw = encode_block(RANDOM, block_id(RANDOM), KEY, 1)
    assert raw[5] & codec.FLAG_ZSTD == 0
    packed = encode_block(TEXT, block_id(TEXT), KEY, 1)
    assert packed[5] & codec.FLAG_ZSTD
    assert len(packed) < len(TEXT) // 10
    plain = AESGCM(KEY).decrypt(packed[10:22], packed[22:], packed[:10] + block_id(TEXT).encode())
    assert zstandard.ZstdDecompressor().decompress(plain) == TEXT


def test_nonces_are_random() -> None:
    bid = block_id(TEXT)
    a, b = (encode_block(TEXT, bid, KEY, 1) for _ in range(2))
    assert a[10:22] != b[10:22]
    assert a != b


@pytest.mark.parametrize("data", [TEXT, RANDOM[:3000]], ids=["compressed", "raw"])
@settings(max_examples=200, deadline=None)
@given(where=st.integers(0, 10**9), bit=st.integers(0, 7))
def test_any_flipped_bit_is_refused(data: bytes, where: int, bit: int) -> None:
    bid = block_id(data)
    stored = bytearray(encode_block(data, bid, KEY, 5))
    stored[where % len(stored)] ^= 1 << bit
    with pytest.raises(BlockError):
        decode_block(bytes(stored), bid, KEY)


@pytest.mark.parametrize(
    "region",
    [
        range(0, 4),
        range(4, 5),
        range(5, 6),
        range(6, 10),
        range(10, 22),
        range(22, 40),
        range(-16, 0),
    ],
)
def test_every_region_is_covered(region: range) -> None:
    bid = block_id(TEXT)
    stored = encode_block(TEXT, bid, KEY, 5)
    for i in region:
        tampered = bytearray(stored)
        tampered[i] ^= 0x80
        with pytest.raises(BlockError):
            decode_block(bytes(tampered), bid, KEY)


def test_flipped_flag_or_key_version_fails_authentication() -> None:
    bid = block_id(TEXT)
    stored = bytearray(encode_block(TEXT, bid, KEY, 5))
    stored[5] ^= codec.FLAG_ZSTD
    with pytest.raises(BlockIntegrityError, match="failed authentication"):
        decode_block(bytes(stored), bid, KEY)
    stored[5] ^= codec.FLAG_ZSTD
    stored[9] ^= 1
    with pytest.raises(BlockIntegrityError, match="failed authentication"):
        decode_block(bytes(stored), bid, KEY)


@pytest.mark.parametrize("length", [0, 3, 9, 10, 21, 37])
def test_too_short_is_a_format_error(length: int) -> None:
    bid = block_id(TEXT)
    stored = encode_block(TEXT, bid, KEY, 5)
    with pytest.raises(BlockFormatError):
        decode_block(stored[:length], bid, KEY)


@settings(max_examples=50, deadline=None)
@given(cut=st.integers(1, 10**9))
def test_truncated_is_refused(cut: int) -> None:
    bid = block_id(TEXT)
    stored = encode_block(TEXT, bid, KEY, 5)
    truncated = stored[: len(stored) - 1 - cut % (len(stored) - 1)]
    with pytest.raises(BlockError):
        decode_block(truncated, bid, KEY)
    if len(truncated) >= codec.MIN_STORED_SIZE:
        with pytest.raises(BlockIntegrityError):
            decode_block(truncated, bid, KEY)


def test_wrong_key_is_an_integrity_error() -> None:
    bid = block_id(TEXT)
    stored = encode_block(TEXT, bid, KEY, 5)
    with pytest.raises(BlockIntegrityError, match="wrong key"):
        decode_block(stored, bid, OTHER_KEY)


def test_wrong_block_id_is_an_integrity_error() -> None:
    stored = encode_block(TEXT, block_id(TEXT), KEY, 5)
    with pytest.raises(BlockIntegrityError):
        decode_block(stored, block_id(b"something else"), KEY)


def test_plaintext_of_another_id_is_refused_after_decrypting() -> None:
    lie = block_id(b"not this text")
    stored = encode_block(TEXT, lie, KEY, 5)  # encode trusts the caller's id
    with pytest.raises(BlockIntegrityError, match="another id"):
        decode_block(stored, lie, KEY)


def test_unknown_version_magic_and_flags_are_format_errors() -> None:
    bid = block_id(TEXT)
    stored = encode_block(TEXT, bid, KEY, 5)
    v2 = stored[:4] + bytes([2]) + stored[5:]
    with pytest.raises(BlockFormatError, match="unsupported block format version 2"):
        decode_block(v2, bid, KEY)
    with pytest.raises(BlockFormatError, match="version"):
        stored_key_version(v2)
    with pytest.raises(BlockFormatError, match="magic"):
        decode_block(b"PK\x03\x04" + stored[4:], bid, KEY)
    with pytest.raises(BlockFormatError, match="flags"):
        decode_block(stored[:5] + bytes([0x80 | stored[5]]) + stored[6:], bid, KEY)


def test_malformed_block_id_is_a_format_error() -> None:
    stored = encode_block(TEXT, block_id(TEXT), KEY, 5)
    for bad in ["", "b3:xyz", block_id(TEXT).upper(), "sha256:" + "0" * 64]:
        with pytest.raises(BlockFormatError, match="not a block id"):
            decode_block(stored, bad, KEY)
        with pytest.raises(BlockFormatError):
            encode_block(TEXT, bad, KEY, 5)


def _forge(body: bytes, bid: str, flags: int) -> bytes:
    """A correctly encrypted stored block with an arbitrary body (what a holder of the key,
    or a buggy encoder, could produce)."""
    header = struct.pack(">4sBBI", b"TBLK", 1, flags, 5)
    nonce = os.urandom(12)
    return header + nonce + AESGCM(KEY).encrypt(nonce, body, header + bid.encode())


def test_a_zstd_bomb_is_refused_unread() -> None:
    bomb = zstandard.ZstdCompressor(level=3).compress(bytes(64 * 1024 * 1024))
    bid = block_id(b"x")
    with pytest.raises(BlockIntegrityError, match="more than a block holds"):
        decode_block(_forge(bomb, bid, codec.FLAG_ZSTD), bid, KEY)


def test_a_frame_without_content_size_is_refused() -> None:
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(TEXT)
    bid = block_id(TEXT)
    with pytest.raises(BlockIntegrityError, match="without its decompressed size"):
        decode_block(_forge(frame, bid, codec.FLAG_ZSTD), bid, KEY)


def test_garbage_in_a_compressed_block_is_refused() -> None:
    bid = block_id(TEXT)
    with pytest.raises(BlockIntegrityError, match="decompress"):
        decode_block(_forge(b"\x28\xb5\x2f\xfd garbage", bid, codec.FLAG_ZSTD), bid, KEY)


def test_encode_refuses_oversized_blocks_bad_keys_and_versions() -> None:
    big = bytes(MAX_BLOCK_SIZE + 1)
    with pytest.raises(ValueError, match="at most"):
        encode_block(big, block_id(big), KEY, 1)
    with pytest.raises(ValueError, match="32 bytes"):
        encode_block(TEXT, block_id(TEXT), KEY[:16], 1)
    for version in (-1, 2**32):
        with pytest.raises(ValueError, match="key_version"):
            encode_block(TEXT, block_id(TEXT), KEY, version)


def test_block_errors_map_to_api_errors() -> None:
    for cls, code in [
        (BlockFormatError, "block_format"),
        (BlockIntegrityError, "block_integrity"),
    ]:
        err = cls("boom")
        assert isinstance(err, BlockError)
        assert isinstance(err, TesseraError)
        assert err.status == 422
        assert err.to_body() == {"error": {"code": code, "message": "boom"}}


# --- block keys -------------------------------------------------------------------------


class _Keys(KeyService):
    def __init__(self, secrets: dict[int, bytes]) -> None:
        super().__init__()
        self.secrets = secrets

    def current_version(self) -> int:
        return max(self.secrets)

    def _load_secret(self, version: int) -> bytes:
        return self.secrets[version]

    def versions(self) -> list[int]:
        return sorted(self.secrets)


def test_block_key_is_hmac_sha256_of_the_id_under_the_versioned_secret() -> None:
    bid = block_id(TEXT)
    s1, s2 = os.urandom(32), os.urandom(32)
    expected = hmac.new(s1, bid.encode("ascii"), hashlib.sha256).digest()
    assert derive_block_key(s1, bid) == expected
    keys = _Keys({1: s1, 2: s2})
    assert keys.block_key(bid, 1) == (1, expected)
    assert keys.block_key(bid) == (2, derive_block_key(s2, bid))
    assert derive_block_key(s1, block_id(b"other")) != expected


def test_rotation_old_blocks_decode_with_their_version_key() -> None:
    keys = _Keys({1: os.urandom(32)})
    bid = block_id(TEXT)
    v, k = keys.block_key(bid)
    stored = encode_block(TEXT, bid, k, v)
    keys.secrets[2] = os.urandom(32)  # rotate: new blocks use version 2
    assert keys.block_key(bid)[0] == 2
    _, old = keys.block_key(bid, stored_key_version(stored))
    assert decode_block(stored, bid, old) == TEXT
    with pytest.raises(BlockIntegrityError):
        decode_block(stored, bid, keys.block_key(bid)[1])


def test_derive_block_key_refuses_non_ids() -> None:
    with pytest.raises(BlockFormatError):
        derive_block_key(os.urandom(32), "blocks/abc")


# --- compression policy -----------------------------------------------------------------


def _is_compressed(data: bytes) -> bool:
    return bool(encode_block(data, block_id(data), KEY, 1)[5] & codec.FLAG_ZSTD)


def test_probe_keeps_incompressible_blocks_raw_and_compresses_the_rest() -> None:
    noise = os.urandom(1024 * 1024)
    assert not _is_compressed(noise)
    assert _is_compressed(TEXT * 10)
    assert _is_compressed(noise[: len(noise) // 2] + bytes(len(noise) // 2))  # half zeros
    assert not _is_compressed(noise[:50_000])  # small: compressed, did not shrink, kept raw
    assert _is_compressed(TEXT[:50_000])
    assert not _is_compressed(b"")


# --- many blocks at once ----------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 3])
def test_encode_many_and_decode_many_keep_order(workers: int) -> None:
    blocks = [os.urandom(100_000) if i % 2 else TEXT[: 1000 * (i + 1)] for i in range(20)]
    ids = [block_id(b) for b in blocks]
    stored = list(encode_many(((b, i, KEY, 9) for b, i in zip(blocks, ids, strict=True)), workers))
    assert [stored_key_version(s) for s in stored] == [9] * 20
    for s, b, i in zip(stored, blocks, ids, strict=True):
        assert decode_block(s, i, KEY) == b
    jobs = ((s, i, KEY) for s, i in zip(stored, ids, strict=True))
    assert list(decode_many(jobs, workers)) == blocks


@pytest.mark.parametrize("workers", [1, 3])
def test_decode_many_raises_on_a_bad_block(workers: int) -> None:
    blocks = [TEXT[: 100 * (i + 1)] for i in range(10)]
    ids = [block_id(b) for b in blocks]
    stored = list(encode_many(((b, i, KEY, 1) for b, i in zip(blocks, ids, strict=True)), workers))
    stored[6] = bytearray(with_last_byte_flipped(bytes(stored[6])))
    out = decode_many(((s, i, KEY) for s, i in zip(stored, ids, strict=True)), workers)
    assert [next(out) for _ in range(6)] == blocks[:6]
    with pytest.raises(BlockIntegrityError):
        next(out)


def test_abandoning_encode_many_stops_consuming_input() -> None:
    consumed = 0

    def jobs() -> Iterator[tuple[bytes, str, bytes, int]]:
        nonlocal consumed
        for i in range(10_000):
            consumed += 1
            data = b"%d" % i
            yield data, block_id(data), KEY, 1

    out = encode_many(jobs(), workers=2)
    next(out)
    out.close()
    assert consumed <= 10


def test_uninitialized_buffers_have_the_size_asked_and_refuse_negative_sizes() -> None:
    assert len(uninitialized_bytearray(5 * 1024 * 1024)) == 5 * 1024 * 1024
    assert uninitialized_bytearray(0) == bytearray()
    with pytest.raises(ValueError, match="never negative"):
        uninitialized_bytearray(-1)
