"""The API documents: GET /openapi.json and GET /docs, built by flask-smorest.

The OpenAPI document comes from the views' blueprints and the marshmallow
schemas that validate requests. Swagger UI's assets are served from the
``swagger-ui-bundle`` package, so the page works offline.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import marshmallow as ma
from flask import Flask, abort, send_from_directory
from flask_smorest import Api
from flask_smorest import Blueprint as SmorestBlueprint
from webargs.flaskparser import FlaskParser

from ..ingest.schema import PayloadSchema
from .errors import InvalidParameter

ASSETS_PATH = "/docs/assets/"
_ASSETS = {
    "swagger-ui.css",
    "swagger-ui-bundle.js",
    "swagger-ui-standalone-preset.js",
    "favicon-32x32.png",
}


class ErrorSchema(ma.Schema):
    """Every error body: a code, a sentence, and details for some codes."""

    error = ma.fields.String(required=True, metadata={"example": "invalid_payload"})
    message = ma.fields.String(required=True)
    fields = ma.fields.Dict(metadata={"description": "Messages by field name"})
    errors = ma.fields.Dict(metadata={"description": "Messages by batch item index"})
    written = ma.fields.List(
        ma.fields.Integer(),
        metadata={
            "description": "partially_written (Redis Cluster): indexes of the batch items "
            "written; resending the batch counts the others only"
        },
    )
    accepted = ma.fields.Integer(metadata={"description": "partially_written: items counted"})
    duplicates = ma.fields.Integer(
        metadata={"description": "partially_written: items written that were retries"}
    )


class _ParameterParser(FlaskParser):
    """webargs, answering invalid parameters with our 400 ``invalid_parameter``."""

    DEFAULT_VALIDATION_STATUS = 400

    def handle_error(self, error: ma.ValidationError, req: Any, schema: Any, **kwargs: Any):
        messages = error.messages
        # webargs keys messages by location ("query"); the client wants field names.
        if isinstance(messages, dict) and set(messages) <= {"query", "json"}:
            messages = next(iter(messages.values()), messages)
        raise InvalidParameter(messages if isinstance(messages, dict) else {"_": messages})


class Blueprint(SmorestBlueprint):
    """A documented blueprint whose parameter errors use the service's error body."""

    ARGUMENTS_PARSER = _ParameterParser()


def error_responses(*codes: int) -> dict[int, dict[str, Any]]:
    """OpenAPI responses for ``codes``, each with the error body schema."""
    return {
        code: {"description": _DESCRIPTIONS[code], "content": _json_ref("Error")} for code in codes
    }


def accepted_response() -> dict[int, dict[str, Any]]:
    return {
        200: {
            "description": "Counted (or recognised as a retry of a counted payload)",
            "content": _json_ref("Accepted"),
        }
    }


def payload_ref() -> dict[str, Any]:
    return {"$ref": "#/components/schemas/Payload"}


def _json_ref(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


_DESCRIPTIONS = {
    400: "Invalid input; nothing was written",
    401: "The bearer token is missing or wrong",
    413: "The body (or the decompressed body) is too large",
    415: "Unsupported Content-Type or Content-Encoding",
    503: "A server the service needs is unavailable; retry",
}


class _Api(Api):
    # flask-smorest registers this as the "Error" schema of every error response.
    ERROR_SCHEMA = ErrorSchema


class _Accepted(ma.Schema):
    accepted = ma.fields.Integer(metadata={"description": "payloads counted"})
    duplicates = ma.fields.Integer(metadata={"description": "retries answered, not counted"})


def _version() -> str:
    try:
        return metadata.version("payload-stats")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def init_app(app: Flask, blueprints: list[SmorestBlueprint]) -> Api:
    """Register ``blueprints`` through flask-smorest, which documents them."""
    app.config.update(
        API_TITLE="payload-stats",
        API_VERSION=_version(),
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL=ASSETS_PATH,
        # Else Swagger UI shows a badge fetched from validator.swagger.io.
        OPENAPI_SWAGGER_UI_CONFIG={"validatorUrl": None},
    )
    api = _Api(
        app,
        spec_kwargs={
            "info": {"description": "Video-player telemetry into billing-grade traffic statistics."}
        },
    )
    api.spec.components.schema("Payload", schema=PayloadSchema)
    api.spec.components.schema("Accepted", schema=_Accepted)
    api.spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    for blueprint in blueprints:
        api.register_blueprint(blueprint)
    # flask-smorest serves these two itself without documenting them.
    api.spec.path(
        rule=next(app.url_map.iter_rules("api-docs.openapi_json")),
        operations={
            "get": {
                "summary": "This OpenAPI document",
                "tags": ["docs"],
                "responses": {"200": {"description": "OpenAPI 3 document"}},
            }
        },
    )
    api.spec.path(
        rule=next(app.url_map.iter_rules("api-docs.openapi_swagger_ui")),
        operations={
            "get": {
                "summary": "Swagger UI for this document (assets served locally)",
                "tags": ["docs"],
                "responses": {"200": {"description": "HTML page"}},
            }
        },
    )
    app.add_url_rule(f"{ASSETS_PATH}<name>", "docs_asset", _asset)
    return api


def _asset(name: str):
    if name not in _ASSETS:
        abort(404)
    from swagger_ui_bundle import swagger_ui_path

    return send_from_directory(str(swagger_ui_path), name, max_age=86400)
