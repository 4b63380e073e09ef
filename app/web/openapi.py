"""The OpenAPI 3 document, built from the marshmallow schemas used for validation."""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from ..ingest.schema import PayloadSchema

_ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "example": "invalid_payload"},
        "message": {"type": "string"},
        "fields": {"type": "object", "additionalProperties": True},
        "errors": {"type": "object", "additionalProperties": True},
    },
}
_ACCEPTED = {
    "type": "object",
    "properties": {
        "accepted": {"type": "integer", "description": "payloads counted"},
        "duplicates": {"type": "integer", "description": "retries answered, not counted"},
    },
}
_ROW = {
    "type": "object",
    "properties": {
        "time": {"type": "string", "format": "date-time", "description": "window end (UTC)"},
        "customer": {"type": "string"},
        "content": {"type": "string"},
        "cdn": {"type": "integer", "format": "int64"},
        "p2p": {"type": "integer", "format": "int64"},
        "sessions": {"type": "integer", "format": "int64"},
        "payloads": {"type": "integer", "format": "int64"},
        "p2p_share": {
            "type": "number",
            "nullable": True,
            "description": "p2p / (cdn + p2p); null when both are 0",
        },
    },
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def build_spec(version: str) -> dict[str, Any]:
    spec = APISpec(
        title="payload-stats",
        version=version,
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "Video-player telemetry into billing-grade traffic statistics."},
    )
    spec.components.schema("Payload", schema=PayloadSchema)
    spec.components.schema("Error", _ERROR)
    spec.components.schema("Accepted", _ACCEPTED)
    spec.components.schema("StatsRow", _ROW)
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    payload = {"$ref": "#/components/schemas/Payload"}
    accepted = _json({"$ref": "#/components/schemas/Accepted"}, "Accepted")
    rows = {"type": "array", "items": {"$ref": "#/components/schemas/StatsRow"}}
    ingest_errors = {
        "400": _error("Invalid JSON or payload; nothing was written"),
        "401": _error("STATS_INGEST_TOKEN is set and the bearer token is missing or wrong"),
        "413": _error("Body (or decompressed body) too large"),
        "415": _error("Unsupported Content-Encoding"),
        "503": _error("Redis unavailable; retry"),
    }
    spec.path(
        "/stats",
        operations={
            "post": {
                "summary": "Record one device payload",
                "description": "A payload with the token and sessionDuration of one accepted "
                "within STATS_DEDUP_SECONDS is a retry: answered, not counted. "
                "Accepts Content-Encoding: gzip.",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": payload}},
                },
                "responses": {"200": accepted, **ingest_errors},
            },
            "get": {
                "summary": "Stats history from PostgreSQL",
                "security": [{"bearer": []}],
                "parameters": [
                    _query("customer", "Only this customer"),
                    _query("content", "Only this content"),
                    _query(
                        "from",
                        "Window ends at or after this ISO 8601 time",
                        {"type": "string", "format": "date-time"},
                    ),
                    _query(
                        "to",
                        "Window ends before this ISO 8601 time",
                        {"type": "string", "format": "date-time"},
                    ),
                    _query("order", "By time", {"type": "string", "enum": ["asc", "desc"]}),
                    _query(
                        "limit",
                        "Rows per page",
                        {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                    ),
                    _query("cursor", "The `next` value of the previous page"),
                    _query(
                        "group_by",
                        "Roll rows up by these columns",
                        {"type": "string", "enum": ["customer", "content", "customer,content"]},
                    ),
                    _query(
                        "bucket",
                        "Roll rows up into time buckets",
                        {"type": "string", "enum": ["5m", "1h", "1d"]},
                    ),
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "rows": rows,
                                "next": {"type": "string", "nullable": True},
                            },
                        },
                        "One page",
                    ),
                    "400": _error("Invalid parameter"),
                    "401": _error("Missing or wrong bearer token"),
                    "503": _error("PostgreSQL unavailable"),
                },
            },
        },
    )
    spec.path(
        "/stats/batch",
        operations={
            "post": {
                "summary": "Record 1..1000 payloads, all or nothing",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "array",
                                "items": payload,
                                "minItems": 1,
                                "maxItems": 1000,
                            }
                        },
                        "application/x-ndjson": {
                            "schema": {"type": "string", "description": "one payload per line"}
                        },
                    },
                },
                "responses": {"200": accepted, **ingest_errors},
            }
        },
    )
    spec.path(
        "/stats/live",
        operations={
            "get": {
                "summary": "Counters still in Redis: the open window and windows not yet flushed",
                "security": [{"bearer": []}],
                "parameters": [
                    _query("customer", "Only this customer"),
                    _query("content", "Only this content"),
                ],
                "responses": {
                    "200": _json({"type": "object", "properties": {"rows": rows}}, "Live rows"),
                    "401": _error("Missing or wrong bearer token"),
                    "503": _error("Redis unavailable"),
                },
            }
        },
    )
    spec.path(
        "/healthz",
        operations={
            "get": {
                "summary": "The process answers",
                "responses": {"200": _json({"type": "object"}, "Alive")},
            }
        },
    )
    spec.path(
        "/readyz",
        operations={
            "get": {
                "summary": "Redis and PostgreSQL answer",
                "responses": {
                    "200": _json({"type": "object"}, "Ready"),
                    "503": _error("A server is down; `checks` names it"),
                },
            }
        },
    )
    spec.path(
        "/openapi.json",
        operations={
            "get": {
                "summary": "This OpenAPI document",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3 document")},
            }
        },
    )
    spec.path(
        "/docs",
        operations={
            "get": {
                "summary": "Swagger UI for this document (assets served locally)",
                "responses": {
                    "200": {
                        "description": "HTML page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    )
    spec.path(
        "/metrics",
        operations={
            "get": {
                "summary": "Prometheus metrics",
                "security": [{"bearer": []}],
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _error("Missing or wrong bearer token"),
                },
            }
        },
    )
    return spec.to_dict()
