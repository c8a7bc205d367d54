"""Presigned S3 PUTs in bulk: botocore signs the first of a batch, this module the rest.

botocore's `generate_presigned_url` spends 0.6-1.6 ms of CPU per URL on request
serialization, endpoint rules and event hooks: most of a `/v1/uploads/urls` call, 128
URLs at a time (1.6 s of a 1,000-file sync's server CPU). Yet the SigV4 query signatures
of one batch differ only in the path, the content length and the checksum they bind.
So botocore signs the first URL as always, and that URL gives everything else: endpoint
and path prefix, date, credential scope, expiry, session token. The rest is HMAC.

The first URL is signed both ways and the two signatures must agree; when they do not (a
botocore release that signs differently, credentials rotated in between, a header this
module does not know) `BulkPutSigner.from_reference` returns None and the caller leaves
every URL to botocore. A wrong signature can therefore never be handed out unnoticed.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
SIGNED_HEADERS = "content-length;host;x-amz-checksum-sha256"
_SIGNATURE = "X-Amz-Signature"


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _quote(value: str) -> str:
    return quote(value, safe="-_.~")


@dataclass(frozen=True)
class BulkPutSigner:
    """Signs PUTs like a reference URL botocore presigned (same date, scope, expiry)."""

    scheme: str
    host: str  # host[:port], as signed
    path_prefix: str  # the path before the object key ("/bucket" path-style, else "")
    query: str  # the canonical query string, all parameters but the signature
    amz_date: str
    scope: str
    signing_key: bytes

    @classmethod
    def from_reference(
        cls,
        url: str,
        key: str,
        size: int,
        checksum: str,
        secret_key: str,
        session_token: str | None,
    ) -> BulkPutSigner | None:
        """A signer for the batch whose first PUT (of `key`, `size` bytes, base64 SHA-256
        `checksum`) botocore presigned as `url` with `secret_key`; None unless a URL this
        signer makes for the same PUT carries the same signature."""
        parts = urlsplit(url)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        encoded_key = quote(key, safe="/~")
        if (
            params.get("X-Amz-Algorithm") != ALGORITHM
            or params.get("X-Amz-SignedHeaders") != SIGNED_HEADERS
            or params.get("X-Amz-Security-Token") != session_token
            or not parts.path.endswith("/" + encoded_key)
        ):
            return None
        try:
            access_key, date, region, service, terminal = params["X-Amz-Credential"].split("/")
            amz_date, expected = params["X-Amz-Date"], params.pop(_SIGNATURE)
        except (KeyError, ValueError):
            return None
        if terminal != "aws4_request" or not amz_date.startswith(date) or not access_key:
            return None
        signing_key = _hmac(
            _hmac(_hmac(_hmac(f"AWS4{secret_key}".encode(), date), region), service),
            "aws4_request",
        )
        prefix = parts.path[: len(parts.path) - len(encoded_key)]
        signer = cls(
            scheme=parts.scheme,
            host=parts.netloc,
            path_prefix=prefix,
            query="&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(params.items())),
            amz_date=amz_date,
            scope=f"{date}/{region}/{service}/aws4_request",
            signing_key=signing_key,
        )
        return signer if signer.signature(key, size, checksum) == expected else None

    def _path(self, key: str) -> str:
        return self.path_prefix + quote(key, safe="/~")

    def signature(self, key: str, size: int, checksum: str) -> str:
        """The SigV4 signature of a PUT of `key` bound to `size` and `checksum`."""
        canonical = "\n".join(
            [
                "PUT",
                self._path(key),
                self.query,
                f"content-length:{size}\nhost:{self.host}\nx-amz-checksum-sha256:{checksum}\n",
                SIGNED_HEADERS,
                "UNSIGNED-PAYLOAD",
            ]
        )
        to_sign = "\n".join(
            [ALGORITHM, self.amz_date, self.scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        return _hmac(self.signing_key, to_sign).hex()

    def url(self, key: str, size: int, checksum: str) -> str:
        """The presigned URL of a PUT of `key` bound to `size` and `checksum`."""
        signature = self.signature(key, size, checksum)
        return f"{self.scheme}://{self.host}{self._path(key)}?{self.query}&{_SIGNATURE}={signature}"
