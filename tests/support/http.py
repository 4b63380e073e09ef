"""Checks of HTTP answers (Flask test client responses)."""

from __future__ import annotations

import json
from typing import Any


def ok(resp) -> dict[str, Any]:
    """The JSON body of a 200 answer."""
    assert resp.status_code == 200, resp.get_data()[:500]
    assert resp.mimetype == "application/json"
    return resp.get_json()


def assert_error(resp, status: int, code: str | None = None, fields: Any = None) -> dict[str, Any]:
    """The JSON error body ``{"error": code, "message": text, ...}`` of ``resp``.

    ``fields``: the names the body's ``fields`` must hold, exactly, each with
    at least one message.
    """
    assert resp.status_code == status, resp.get_data()[:500]
    assert resp.mimetype == "application/json", resp.get_data()[:300]
    body = json.loads(resp.get_data())
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("message"), str) and body["message"], body
    if code is not None:
        assert body["error"] == code, body
    if fields is not None:
        assert isinstance(body.get("fields"), dict), body
        assert set(body["fields"]) == set(fields), body
        for name in fields:
            messages = body["fields"][name]
            assert messages and all(isinstance(m, str) and m for m in messages), body
    return body
