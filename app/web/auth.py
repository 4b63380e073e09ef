"""Bearer tokens for the read endpoints (STATS_API_TOKEN) and ingest (STATS_INGEST_TOKEN)."""

from __future__ import annotations

import hmac

from flask import request

from .errors import Unauthorized


def require_bearer(token: str | None) -> None:
    """Raise Unauthorized unless the request carries ``token``; no-op when it is None."""
    if token is None:
        return
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    # compare_digest: the time taken does not tell how much of the token matched.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        value.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8")
    ):
        raise Unauthorized("A valid 'Authorization: Bearer <token>' header is required.")
