"""The OpenAPI 3.1 document, generated from the route table and the pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

import tessera
from tessera.api.routes import COMMON_ERRORS, ROUTES
from tessera.domain.models import ErrorBody, HealthResponse

_REF = "#/components/schemas/{model}"
_ERROR_TEXT = {
    400: "bad request or invalid cursor",
    401: "missing or invalid token",
    403: "visible, but your access does not allow this",
    404: "not found in your view",
    409: "conflict (stale parent_rev, path taken)",
    413: "over a size limit",
    422: "malformed body or invalid path",
    429: "throttled; retry after Retry-After",
    503: "unavailable; retry after Retry-After",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def build_openapi() -> dict[str, Any]:
    """The document served at GET /v1/openapi.json."""
    models: set[type[BaseModel]] = {ErrorBody, HealthResponse}
    for route in ROUTES:
        if route.request is not None:
            models.add(route.request)
        models.update(t for _, t, _ in route.extra_responses)
    ordered = sorted(models, key=lambda t: t.__name__)
    _, defs = models_json_schema(
        [(t, "validation") for t in ordered], ref_template=_REF, by_alias=True
    )
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    paths: dict[str, Any] = {}
    for route in ROUTES:
        out = TypeAdapter(route.response).json_schema(
            ref_template=_REF, mode="serialization", by_alias=True
        )
        schemas.update(out.pop("$defs", {}))
        responses: dict[str, Any] = {
            "200": {"description": "OK", "content": {"application/json": {"schema": out}}}
        }
        for status, model, text in route.extra_responses:
            responses[str(status)] = {
                "description": text,
                "content": {"application/json": {"schema": _ref(model)}},
            }
        for status in sorted({*route.errors, *COMMON_ERRORS}):
            responses[str(status)] = {
                "description": _ERROR_TEXT.get(status, "error"),
                "content": {"application/json": {"schema": _ref(ErrorBody)}},
            }
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.path.removeprefix("/v1/").replace("/", "_"),
            "security": [{"bearer": []}],
            "responses": responses,
        }
        if route.request is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(route.request)}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = op
    paths["/v1/health"] = {
        "get": {
            "summary": "Liveness (no auth)",
            "operationId": "health",
            "security": [],
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"application/json": {"schema": _ref(HealthResponse)}},
                }
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tessera API", "version": tessera.__version__},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
