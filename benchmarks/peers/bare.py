"""Peer ``bare``: parse the JSON body, answer 204. The HTTP framework's ceiling."""

from __future__ import annotations

from flask import Flask, request


def create_app() -> Flask:
    """A Flask app whose ``POST /stats`` only decodes the body."""
    app = Flask(__name__)

    @app.post("/stats")
    def post_stats():
        request.get_json()
        return "", 204

    return app
