"""GET /openapi.json and GET /docs (Swagger UI served from a pip package: works offline)."""

from __future__ import annotations

from importlib import metadata

from flask import Blueprint, Response, abort, current_app, jsonify, send_from_directory

from .openapi import build_spec

bp = Blueprint("docs", __name__)

_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>payload-stats API</title>
  <link rel="stylesheet" href="docs/assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/assets/swagger-ui-bundle.js"></script>
  <script>
    // validatorUrl: null, or the page would call an online validator.
    window.ui = SwaggerUIBundle({url: "openapi.json", dom_id: "#swagger-ui", validatorUrl: null});
  </script>
</body>
</html>
"""
_ASSETS = {"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png"}


def _version() -> str:
    try:
        return metadata.version("payload-stats")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@bp.get("/openapi.json")
def openapi_json():
    spec = current_app.extensions.setdefault("payload_stats_openapi", build_spec(_version()))
    return jsonify(spec)


@bp.get("/docs")
def docs():
    return Response(_PAGE, mimetype="text/html")


@bp.get("/docs/assets/<name>")
def docs_asset(name: str):
    if name not in _ASSETS:
        abort(404)
    from swagger_ui_bundle import swagger_ui_path

    return send_from_directory(str(swagger_ui_path), name, max_age=86400)
