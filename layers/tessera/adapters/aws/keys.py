"""`KmsKeyService`: block-key secrets by envelope encryption (DESIGN §3).

Each key version's secret is a 256-bit KMS data key. Only its KMS-encrypted form is
stored, base64, in an SSM Parameter Store SecureString `<prefix>/v<version>`; the
encryption context names the version, so a blob cannot be replayed under another version.
A process decrypts each version it needs once (the `KeyService` cache) — once per Lambda
cold start. Rotation adds a version (`create_key_version`); old versions stay readable.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from tessera.ports import KeyService

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_ssm import SSMClient

_PURPOSE = "tessera-block-key"


def _context(version: int) -> dict[str, str]:
    return {"purpose": _PURPOSE, "version": str(version)}


def _param_name(prefix: str, version: int) -> str:
    return f"{prefix.rstrip('/')}/v{version}"


def stored_key_versions(ssm: SSMClient, prefix: str, *, decrypt: bool = False) -> dict[int, str]:
    """Every key version stored under `prefix` → its parameter's value: the KMS-encrypted
    secret in base64 (SSM's own SecureString layer removed when `decrypt`, else opaque)."""
    versions: dict[int, str] = {}
    pages = ssm.get_paginator("get_parameters_by_path").paginate(
        Path=prefix.rstrip("/"), Recursive=False, WithDecryption=decrypt
    )
    for page in pages:
        for param in page.get("Parameters", []):
            leaf = param["Name"].rsplit("/", 1)[-1]
            if leaf.startswith("v") and leaf[1:].isdigit():
                versions[int(leaf[1:])] = param["Value"]
    return versions


def list_key_versions(ssm: SSMClient, prefix: str) -> list[int]:
    """Every key version stored under `prefix`, ascending."""
    return sorted(stored_key_versions(ssm, prefix))


def create_key_version(kms: KMSClient, ssm: SSMClient, key_id: str, prefix: str) -> int:
    """Admin: generate a new data key under `key_id`, store it encrypted; its version.

    Safe to run concurrently: a version number is claimed by a create-only PutParameter.
    """
    while True:
        version = max(list_key_versions(ssm, prefix), default=0) + 1
        blob = kms.generate_data_key(
            KeyId=key_id, KeySpec="AES_256", EncryptionContext=_context(version)
        )["CiphertextBlob"]
        try:
            ssm.put_parameter(
                Name=_param_name(prefix, version),
                Value=base64.b64encode(blob).decode("ascii"),
                Type="SecureString",
                Overwrite=False,
                Description=f"Tessera block-key secret v{version} (KMS-encrypted data key)",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ParameterAlreadyExists":
                continue  # another admin took this number: take the next one
            raise
        return version


def ensure_key_version(kms: KMSClient, ssm: SSMClient, key_id: str, prefix: str) -> int | None:
    """Create the first key version if `prefix` holds none: its number, else None (deploy)."""
    if list_key_versions(ssm, prefix):
        return None
    return create_key_version(kms, ssm, key_id, prefix)


class KmsKeyService(KeyService):
    """Secrets decrypted by KMS from Parameter Store, once per process."""

    #: The version listing is read again, to learn of a rotation by another process, at most
    #: this often: a cursor may name any version, and forged ones must not cost SSM calls;
    #: and (`refresh`, at each invocation's start) at least this often, so a rotation (after
    #: a leak) reaches a warm function within a minute, not at its next cold start, hours on.
    RELIST_S = 60.0

    def __init__(self, kms: KMSClient, ssm: SSMClient, prefix: str) -> None:
        super().__init__()
        self._kms = kms
        self._ssm = ssm
        self._prefix = prefix
        self._current: int | None = None
        self._known: frozenset[int] = frozenset()
        self._next_listing = 0.0
        # What the version listing brought along, so the current secret needs no second
        # SSM call at cold start; each value is used once, then the decrypted key is cached.
        self._listed: dict[int, str] = {}
        # Versions SSM had no parameter for, and until when to take its word (wall time): a
        # stored block's header names its version, its uploader writes it, and each block
        # naming the one after the newest cost a GetParameter (maintenance loads that one:
        # a rotation since this process listed may have made it)
        self._missing: dict[int, float] = {}

    def _list(self) -> None:
        # wall time: a frozen Lambda's monotonic clock stands still between invocations;
        # pushed on before the call, so a failing listing is not tried at every request
        self._next_listing = time.time() + self.RELIST_S
        listed = stored_key_versions(self._ssm, self._prefix, decrypt=True)
        self._known = frozenset(listed)
        self._listed.update((v, blob) for v, blob in listed.items() if v not in self._cache)
        if listed:
            self._current = max(listed)

    def current_version(self) -> int:
        """The newest stored version as last listed: at the first call, then by `refresh`
        (never here: callers ask inside transactions, holding locks, where an SSM round
        trip, throttled or slow, would hold them too). Raises KeyError when no version
        exists yet."""
        if self._current is None:
            self._list()
        if self._current is None:
            raise KeyError(f"no block-key versions under {self._prefix}")
        return self._current

    def refresh(self) -> None:
        """List the versions again once the last listing is `RELIST_S` old. A listing that
        fails keeps what the last one found (logged): uploads go on under that version."""
        if self._current is None or time.time() < self._next_listing:
            return
        try:
            self._list()
        except (ClientError, BotoCoreError):
            log.warning("listing the block-key versions failed; still on version %d",
                        self._current, exc_info=True)  # fmt: skip

    def versions(self) -> list[int]:
        """The versions the last listing found (at cold start, or at a later `knows`)."""
        self.current_version()
        return sorted(self._known)

    def knows(self, version: int) -> bool:
        """From the last listing; a version newer than any listed (a process started after
        a rotation may have signed a cursor with it) lists again, at most every `RELIST_S`."""
        if version > max(self.versions()) and time.time() >= self._next_listing:
            self._list()
        return version in self._known

    def _load_secret(self, version: int) -> bytes:
        value = self._listed.pop(version, None)
        if value is None:
            if time.time() < self._missing.get(version, 0.0):
                raise KeyError(f"unknown key version {version}")
            try:
                value = self._ssm.get_parameter(
                    Name=_param_name(self._prefix, version), WithDecryption=True
                )["Parameter"]["Value"]
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "ParameterNotFound":
                    self._missing[version] = time.time() + self.RELIST_S
                    raise KeyError(f"unknown key version {version}") from None
                raise
        plaintext = self._kms.decrypt(
            CiphertextBlob=base64.b64decode(value), EncryptionContext=_context(version)
        )["Plaintext"]
        if len(plaintext) != 32:
            raise ValueError(f"key version {version} is not a 256-bit secret")
        return plaintext
