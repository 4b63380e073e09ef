"""The error family and the JSON error handlers.

Every error body is ``{"error": code, "message": text, ...}``.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error answered to the client; subclasses set ``status`` and ``code``."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}


class InvalidJSON(APIError):
    code = "invalid_json"


class InvalidGzip(APIError):
    code = "invalid_gzip"


class UnsupportedEncoding(APIError):
    status = 415
    code = "unsupported_encoding"


class UnsupportedMediaType(APIError):
    status = 415
    code = "unsupported_media_type"


class FieldErrors(APIError):
    """Errors by field name, each a list of messages; the message names them all."""

    what = "input"

    def __init__(self, messages: dict[str, Any]) -> None:
        names = ", ".join(sorted(str(name) for name in messages))
        super().__init__(f"Invalid {self.what}: {names}.", fields=messages)


class InvalidPayload(FieldErrors):
    code = "invalid_payload"
    what = "payload"


class InvalidBatch(APIError):
    """The batch itself is malformed: not a list, empty or too long."""

    code = "invalid_batch"


class InvalidBatchItems(APIError):
    """Some payloads of a batch are invalid; none of the batch is written."""

    code = "invalid_payload"

    def __init__(self, errors: dict[str, Any], total: int) -> None:
        items = ", ".join(sorted(errors, key=int))
        super().__init__(
            f"{len(errors)} of {total} payloads are invalid (items {items}); nothing was written.",
            errors=errors,
        )


class Unauthorized(APIError):
    status = 401
    code = "unauthorized"


class InvalidParameter(FieldErrors):
    code = "invalid_parameter"
    what = "query parameter"


class Unavailable(APIError):
    status = 503
    code = "unavailable"
    retry_after = 1


class BufferFull(Unavailable):
    """Redis reached its memory limit: nothing was written; the flush frees room
    once the window closes (docs/deployment.md, "Redis memory")."""

    code = "buffer_full"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PartiallyWritten(Unavailable):
    """Redis Cluster: a batch's payloads in some shards were written, the others
    were not (docs/payload.md, "Batches"). ``written`` lists the indexes written;
    resending the whole batch counts the others only (the written ones are
    recognised as retries)."""

    code = "partially_written"

    def __init__(
        self, written: list[int], total: int, accepted: int, duplicates: int, retry_after: int = 1
    ) -> None:
        super().__init__(
            f"{len(written)} of {total} payloads were written, the others were not: resend "
            "the batch (the written ones will be answered as duplicates and count nothing).",
            written=written,
            accepted=accepted,
            duplicates=duplicates,
        )
        self.retry_after = retry_after


def _json(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    request.environ["payload_stats.error"] = body["error"]  # the rejection metric's reason
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def handle_api_error(exc: APIError) -> Response:
    headers = None
    if isinstance(exc, Unavailable):
        headers = {"Retry-After": str(exc.retry_after)}
    elif exc.status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="payload-stats"'}
    return _json(exc.body(), exc.status, headers)


def handle_http_exception(exc: HTTPException) -> Response:
    code = (exc.name or "error").lower().replace(" ", "_")
    headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
    return _json({"error": code, "message": exc.description}, exc.code or 500, headers)


def handle_unexpected(exc: Exception) -> Response:
    logger.exception("unhandled_exception")
    return _json({"error": "internal_error", "message": "Internal server error."}, 500)


def init_app(app: Flask) -> None:
    app.register_error_handler(APIError, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
