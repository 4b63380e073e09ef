"""GET /dashboard: the operators' page; GET / redirects there.

The page, its script and style, and the charting library (uPlot, vendored
under ``static/dashboard/vendor/uplot`` with its licence) are files of this
package: the page loads nothing from elsewhere and works offline. It reads
the JSON API like any client (``GET /stats/status``, ``/stats/live``,
``/stats``) with the tab's bearer token when ``STATS_API_TOKEN`` is set; the
page itself holds no data and is open, like /docs.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from apispec import APISpec
from flask import Blueprint, Flask, Response, current_app, redirect

bp = Blueprint(
    "dashboard",
    __name__,
    static_folder="static/dashboard",
    static_url_path="/dashboard/static",
)

# Everything from this origin, nothing inline but the styles uPlot sets on its nodes.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


@cache
def _template() -> str:
    return resources.files(__package__).joinpath("templates/dashboard.html").read_text("utf-8")


@bp.get("/")
def root():
    return redirect("dashboard", code=302)


@bp.get("/dashboard")
def page():
    config = current_app.extensions["payload_stats"].config
    required = "true" if config.api_token is not None else "false"
    response = Response(_template().replace("__TOKEN_REQUIRED__", required), mimetype="text/html")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def init_app(app: Flask, spec: APISpec) -> None:
    """Register the page and document its two routes (the assets are files)."""
    app.register_blueprint(bp)
    spec.path(
        rule=next(app.url_map.iter_rules("dashboard.root")),
        operations={
            "get": {
                "summary": "Redirects to the dashboard",
                "tags": ["dashboard"],
                "responses": {"302": {"description": "Location: dashboard"}},
            }
        },
    )
    spec.path(
        rule=next(app.url_map.iter_rules("dashboard.page")),
        operations={
            "get": {
                "summary": "The dashboard: live counters, charts, the flush (assets served "
                "locally, works offline; the data needs the API token when one is set)",
                "tags": ["dashboard"],
                "responses": {
                    "200": {
                        "description": "HTML page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    )
