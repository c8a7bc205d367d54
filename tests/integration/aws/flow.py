"""A sync client's API calls for the AWS tests, over either transport: straight into the
Lambda handlers (API Gateway events) or over HTTP through the AWS-mode gateway."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

from tessera.blocks import decode_block, encode_block, iter_chunks, scan_file

from .lambda_events import Context, rest_event

#: (path, JSON body or None for a GET) -> (status, JSON body)
Send = Callable[[str, Any], tuple[int, Any]]


def lambda_send(handler: Callable[..., dict[str, Any]], claims: Any) -> Send:
    """Invoke a Lambda handler with an API Gateway event carrying `claims`."""

    def send(path: str, body: Any) -> tuple[int, Any]:
        method = "GET" if body is None else "POST"
        resp = handler(rest_event(path, body, claims=claims, method=method), Context())
        return resp["statusCode"], json.loads(resp["body"]) if resp.get("body") else None

    return send


def http_send(http: httpx.Client) -> Send:
    """Call the gateway over HTTP (the client carries the bearer token)."""

    def send(path: str, body: Any) -> tuple[int, Any]:
        r = http.get(path) if body is None else http.post(path, json=body)
        return r.status_code, r.json() if r.content else None

    return send


class Client:
    """Upload, commit and download like the sync client does, over one transport."""

    def __init__(self, send: Send, longpoll: Send | None = None) -> None:
        self.send = send
        self.longpoll = longpoll or send

    def call(self, path: str, body: Any = None) -> tuple[int, Any]:
        """One API call; (status, body)."""
        if path == "/v1/list_folder/longpoll":
            return self.longpoll(path, body)
        return self.send(path, body)

    def upload(self, path: str, local: Path, parent_rev: int | None = None) -> tuple[int, Any]:
        """Upload every needed block to its presigned URL, then commit; (status, body) of
        the commit, or of the upload start when that is refused."""
        manifest = scan_file(local)
        blocks = [{"id": b.id, "size": b.size} for b in manifest.blocks]
        spec = {"path": path, "size": manifest.size, "content_hash": manifest.content_hash}
        status, start = self.call("/v1/uploads", {"files": [{**spec, "blocks": blocks}]})
        if status != 200:
            return status, start
        keys = {n["id"]: (n["key_version"], base64.b64decode(n["key"])) for n in start["needed"]}
        encoded = {
            ref.id: encode_block(data, ref.id, keys[ref.id][1], keys[ref.id][0])
            for ref, data in iter_chunks(local)
            if ref.id in keys
        }
        if encoded:
            sums = {
                i: base64.b64encode(hashlib.sha256(e).digest()).decode() for i, e in encoded.items()
            }
            status, urls = self.call(
                "/v1/uploads/urls",
                {
                    "upload_id": start["upload_id"],
                    "blocks": [
                        {"id": i, "size": len(e), "sha256": sums[i]} for i, e in encoded.items()
                    ],
                },
            )
            assert status == 200, urls
            for url in urls["urls"]:
                assert "X-Amz-Signature=" in url["url"]  # a SigV4 presigned URL, straight to S3
                r = httpx.request(
                    url["method"],
                    url["url"],
                    content=bytes(encoded[url["id"]]),
                    headers=url["headers"],
                )
                assert r.status_code == 200, r.text
        return self.call(
            "/v1/commit",
            {
                **spec,
                "parent_rev": parent_rev,
                "blocks": blocks,
                "upload_id": start["upload_id"],
                "idempotency_key": uuid.uuid4().hex,
            },
        )

    def download(self, path: str) -> bytes:
        """Fetch every block from its presigned URL, decrypt and re-hash, and join them."""
        status, body = self.call("/v1/download", {"path": path})
        assert status == 200, body
        out = bytearray()
        for block in sorted(body["blocks"], key=lambda b: b["offset"]):
            r = httpx.request(block["method"], block["url"], headers=block["headers"])
            assert r.status_code == 200
            out += decode_block(r.content, block["id"], base64.b64decode(block["key"]))
        return bytes(out)


def lambda_client(lambdas: SimpleNamespace, claims: dict[str, str]) -> Client:
    """A client whose calls go straight into the `api` and `longpoll` handlers."""
    return Client(
        lambda_send(lambdas.api.handler, claims), lambda_send(lambdas.longpoll.handler, claims)
    )
