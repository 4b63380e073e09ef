"""Bearer tokens for the read endpoints (STATS_API_TOKEN) and ingest (STATS_INGEST_TOKEN)."""

from __future__ import annotations

import hmac

from flask import request

from .errors import Unauthorized


def holds_bearer(token: str) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>``."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    # compare_digest: the time taken does not tell how much of the token matched.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8")
    )


def require_bearer(token: str | None) -> None:
    """Raise Unauthorized unless the request carries ``token``; no-op when it is None."""
    if token is not None and not holds_bearer(token):
        raise Unauthorized("A valid 'Authorization: Bearer <token>' header is required.")
