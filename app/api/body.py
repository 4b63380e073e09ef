"""Reading request bodies: size limits, gzip, JSON and NDJSON; never a 5xx."""

from __future__ import annotations

import json
import zlib
from typing import Any

import orjson
from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge

from ..errors import InvalidGzip, InvalidJSON, UnsupportedEncoding

NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")

# Integers longer than this are out of every field's range anyway; mapping
# them to a huge value lets the schema name the field, instead of Python's
# int-conversion limit rejecting the whole body.
_MAX_INT_DIGITS = 64
_HUGE = 10**_MAX_INT_DIGITS


def read_body(request: Request, limit: int) -> bytes:
    """The request body, decompressed, at most ``limit`` bytes either way.

    Raises RequestEntityTooLarge (413) past the limit, before or after
    decompression; UnsupportedEncoding (415); InvalidGzip for a bad gzip stream.
    """
    data = request.get_data(cache=False)
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding in ("gzip", "x-gzip"):
        return _gunzip(data, limit)
    raise UnsupportedEncoding(
        f"Content-Encoding {encoding!r} is not supported; send gzip or no encoding."
    )


def _gunzip(data: bytes, limit: int) -> bytes:
    out = bytearray()
    try:
        while data:
            # max_length bounds memory: a gzip bomb stops at limit + 1 bytes.
            stream = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out += stream.decompress(data, limit + 1 - len(out))
            if len(out) > limit or stream.unconsumed_tail:
                raise RequestEntityTooLarge(
                    f"The decompressed body is larger than {limit} bytes."
                )
            if not stream.eof:
                raise InvalidGzip("The gzip body is truncated.")
            data = stream.unused_data  # a further gzip member, if any
    except zlib.error as exc:
        raise InvalidGzip(f"The body is not valid gzip: {exc}.") from None
    return bytes(out)


def _parse_int(text: str) -> int:
    if len(text) > _MAX_INT_DIGITS:
        return -_HUGE if text.startswith("-") else _HUGE
    return int(text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(data: bytes, where: str = "The request body") -> Any:
    """Decode one JSON document. Raises InvalidJSON."""
    if not data.strip():
        raise InvalidJSON(f"{where} is empty: expected JSON.")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass  # orjson is strict; the standard parser tells the precise error
    try:
        return json.loads(data, parse_int=_parse_int, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidJSON(f"{where} is nested too deeply.") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise InvalidJSON(f"{where} is not valid JSON: {exc}.") from None


def parse_ndjson(data: bytes, max_items: int) -> list[Any]:
    """Decode newline-delimited JSON (blank lines are skipped). Raises InvalidJSON."""
    lines = [line for line in data.split(b"\n") if line.strip()]
    if len(lines) > max_items:
        return [None] * len(lines)  # the caller rejects the count; no need to parse
    return [parse_json(line, f"Line {n}") for n, line in enumerate(lines, 1)]
