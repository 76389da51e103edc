"""The OpenAPI 3.1 document of the API, generated from its endpoints.

Each :class:`~torro.api.endpoints.Endpoint` gives its path, method,
parameters, body, replies, error statuses and the token it needs; the
schemas come from its pydantic models (JSON Schema 2020-12, as OpenAPI
3.1 takes it), and the summary and description from its handler's
docstring. The document is built on first request and kept.
"""

import inspect
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from torro.api.endpoints import FULL, OPTIONAL, READ, Endpoint
from torro.api.errors import ErrorBody, describe


OPENAPI_VERSION = "3.1.0"
SCHEMA_PREFIX = "#/components/schemas/"
SECURITY_SCHEME = "bearer"

_HEADERS = {
    401: {"WWW-Authenticate": "Bearer"},
    429: {"Retry-After": "seconds until the client may send again"},
}


def build_document(
    endpoints: Iterable[Endpoint],
    *,
    title: str,
    version: str,
    description: str,
) -> dict[str, Any]:
    """Return the OpenAPI document of ``endpoints``."""
    from pydantic.json_schema import models_json_schema

    endpoints = list(endpoints)
    wanted: list[tuple[type[BaseModel], Any]] = [(ErrorBody, "serialization")]
    for endpoint in endpoints:
        if endpoint.body is not None:
            wanted.append((endpoint.body, "validation"))
        for model in (endpoint.reply, *endpoint.replies.values()):
            if model is not None:
                wanted.append((model, "serialization"))
    wanted = list(dict.fromkeys(wanted))
    references, definitions = models_json_schema(
        wanted, ref_template=SCHEMA_PREFIX + "{model}"
    )

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return dict(references[(model, mode)])

    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        operation = _operation(endpoint, ref)
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = \
            operation
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": description,
        },
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An admin token, full or read-only "
                    "(torro admin-token create).",
                },
            },
        },
    }


def _operation(endpoint: Endpoint, ref: Any) -> dict[str, Any]:
    doc = inspect.cleandoc(endpoint.handler.__doc__ or "")
    summary, _, details = doc.partition("\n\n")
    operation: dict[str, Any] = {
        "tags": [endpoint.tag],
        "operationId": endpoint.handler.__name__,
        "summary": " ".join(summary.split()),
    }
    if details:
        operation["description"] = details
    parameters = [
        *_parameters(endpoint.path_model, "path"),
        *_parameters(endpoint.query, "query"),
    ]
    if parameters:
        operation["parameters"] = parameters
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": ref(endpoint.body, "validation"),
                },
            },
        }

    replies: dict[str, Any] = {}
    if endpoint.reply is not None:
        replies["200"] = _json_reply(
            "Success", ref(endpoint.reply, "serialization")
        )
    else:
        replies["200"] = {
            "description": "Success",
            "content": {endpoint.media_type: {"schema": {"type": "string"}}},
        }
    for status, model in endpoint.replies.items():
        replies[str(status)] = _json_reply(
            describe(status), ref(model, "serialization")
        )
    for status in endpoint.error_statuses:
        replies[str(status)] = _json_reply(
            describe(status), ref(ErrorBody, "serialization"), status
        )
    operation["responses"] = dict(sorted(replies.items()))

    if endpoint.access in (READ, FULL):
        operation["security"] = [{SECURITY_SCHEME: []}]
    elif endpoint.access == OPTIONAL:
        operation["security"] = [{}, {SECURITY_SCHEME: []}]
    return operation


def _json_reply(
    description: str, schema: dict[str, Any], status: int | None = None
) -> dict[str, Any]:
    reply: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    headers = _HEADERS.get(status or 0)
    if headers:
        reply["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in headers.items()
        }
    return reply


def _parameters(
    model: type[BaseModel] | None, where: str
) -> list[dict[str, Any]]:
    if model is None:
        return []
    schema = model.model_json_schema(mode="validation")
    required = set(schema.get("required", ()))
    return [
        {
            "name": name,
            "in": where,
            "required": where == "path" or name in required,
            "schema": {k: v for k, v in field.items() if k != "title"},
        }
        for name, field in schema.get("properties", {}).items()
    ]
