"""Reading JSON request bodies without ever failing with a 5xx."""

from __future__ import annotations

import json
from typing import Any

from flask import Request

from ..errors import InvalidJSON

# Integers longer than this are out of every field's range anyway; mapping
# them to a huge value lets the schema name the field, instead of Python's
# int-conversion limit rejecting the whole body.
_MAX_INT_DIGITS = 64
_HUGE = 10**_MAX_INT_DIGITS


def _parse_int(text: str) -> int:
    if len(text) > _MAX_INT_DIGITS:
        return -_HUGE if text.startswith("-") else _HUGE
    return int(text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def read_json(request: Request) -> Any:
    """The decoded JSON body. Raises InvalidJSON, or 413 past the size limit."""
    data = request.get_data(cache=False)
    if not data.strip():
        raise InvalidJSON("The request body is empty: expected a JSON object.")
    try:
        return json.loads(data, parse_int=_parse_int, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidJSON("The request body is nested too deeply.") from None
    except ValueError as exc:  # includes JSONDecodeError and UnicodeDecodeError
        raise InvalidJSON(f"The request body is not valid JSON: {exc}.") from None
