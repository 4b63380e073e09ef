"""Reading request bodies: size limits, gzip, JSON and NDJSON; never a 5xx."""

from __future__ import annotations

import json
import zlib
from typing import Any

import orjson
from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge

from ..web.errors import InvalidGzip, InvalidJSON, UnsupportedEncoding, UnsupportedMediaType
from .schema import PAYLOAD_FIELDS

JSON_TYPES = ("application/json",)
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")

# Integers longer than this are out of every field's range anyway; mapping
# them to a huge value lets the schema name the field, instead of Python's
# int-conversion limit rejecting the whole body.
_MAX_INT_DIGITS = 64
_HUGE = 10**_MAX_INT_DIGITS
_QUOTED_FIELDS = tuple((name, f'"{name}"'.encode()) for name in PAYLOAD_FIELDS)


# What devices send, checked without parsing the header.
_PLAIN_JSON = frozenset(
    ("application/json", "application/json; charset=utf-8", "application/json;charset=UTF-8",
     "application/json; charset=UTF-8", "application/json;charset=utf-8")
)  # fmt: skip


def check_content_type(request: Request, accepted: tuple[str, ...]) -> None:
    """Raise UnsupportedMediaType (415) unless the body is one of ``accepted``
    types in UTF-8. No Content-Type at all is read as JSON: some players omit it."""
    if request.environ.get("CONTENT_TYPE") in _PLAIN_JSON:
        return
    if request.mimetype and request.mimetype not in accepted:
        raise UnsupportedMediaType(
            f"Content-Type {request.mimetype!r} is not accepted here; send "
            f"{' or '.join(accepted[:2])}.",
        )
    charset = request.mimetype_params.get("charset", "utf-8").strip().lower()
    if charset not in ("utf-8", "utf8"):
        raise UnsupportedMediaType(f"charset {charset!r} is not accepted; send UTF-8.")


def read_body(request: Request, limit: int) -> bytes:
    """The request body, decompressed, at most ``limit`` bytes either way.

    Raises RequestEntityTooLarge (413) past the limit, before or after
    decompression, with or without a Content-Length; UnsupportedEncoding (415);
    InvalidGzip for a bad gzip stream.
    """
    data = _read_raw(request, limit)
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding in ("gzip", "x-gzip"):
        return _gunzip(data, limit)
    raise UnsupportedEncoding(
        f"Content-Encoding {encoding!r} is not supported; send gzip or no encoding."
    )


def _read_raw(request: Request, limit: int) -> bytes:
    if request.content_length is not None or "wsgi.input_terminated" not in request.environ:
        # Werkzeug answered 413 for a Content-Length past the limit; without one
        # and without a server that ends the stream, it reads nothing.
        return request.get_data(cache=False)
    # A chunked body: Werkzeug would stop reading at the limit and hand over a
    # truncated body as if it were whole, so read the server's stream here.
    stream = request.environ["wsgi.input"]
    data = bytearray()
    while chunk := stream.read(min(64 * 1024, limit + 1 - len(data))):
        data += chunk
        if len(data) > limit:
            raise RequestEntityTooLarge(f"The body is larger than {limit} bytes.")
    return bytes(data)


def _gunzip(data: bytes, limit: int) -> bytes:
    out = bytearray()
    try:
        while data:
            # max_length bounds memory: a gzip bomb stops at limit + 1 bytes.
            stream = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out += stream.decompress(data, limit + 1 - len(out))
            if len(out) > limit or stream.unconsumed_tail:
                raise RequestEntityTooLarge(f"The decompressed body is larger than {limit} bytes.")
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


def _unique_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen = set()
    for name, _ in pairs:
        if name in seen and name in PAYLOAD_FIELDS:
            raise ValueError(f"the key {name!r} appears twice in one object")
        seen.add(name)
    return dict(pairs)


def _may_repeat_fields(data: bytes, value: Any) -> bool:
    """False when no object in ``value`` can have held a payload field twice.

    Both parsers keep the last of two equal keys; another reader might keep the
    first and bill a different number, so such a body is refused. Counting
    the quoted names in the raw bytes is cheap; only a mismatch (or an escaped
    name) sends the body through the slower parser that checks each object.
    """
    if b"\\u" in data:
        return True
    if type(value) is dict:  # one payload: the common case, without a generator
        for name, quoted in _QUOTED_FIELDS:
            if data.count(quoted) != (name in value):
                return True
        return False
    items = value if isinstance(value, list) else [value]
    for name, quoted in _QUOTED_FIELDS:
        present = sum(1 for item in items if type(item) is dict and name in item)
        if data.count(quoted) != present:
            return True
    return False


def parse_json(data: bytes, where: str = "The request body") -> Any:
    """Decode one JSON document. Raises InvalidJSON."""
    if not data.strip():
        raise InvalidJSON(f"{where} is empty: expected JSON.")
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        pass  # orjson is strict; the standard parser tells the precise error
    else:
        if not _may_repeat_fields(data, value):
            return value
    try:
        # Decode first: json.loads(bytes) lets UTF-8-encoded surrogates through.
        text = data.decode("utf-8")
        return json.loads(
            text,
            parse_int=_parse_int,
            parse_constant=_reject_constant,
            object_pairs_hook=_unique_fields,
        )
    except RecursionError:
        raise InvalidJSON(f"{where} is nested too deeply.") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise InvalidJSON(f"{where} is not valid JSON: {exc}.") from None


def parse_ndjson(data: bytes, max_items: int) -> list[Any]:
    """Decode newline-delimited JSON (blank lines are skipped). Raises InvalidJSON
    naming the line (counted in the body, blank lines included)."""
    lines = [(n, line) for n, line in enumerate(data.split(b"\n"), 1) if line.strip()]
    if len(lines) > max_items:
        return [None] * len(lines)  # the caller rejects the count; no need to parse
    return [parse_json(line, f"Line {n}") for n, line in lines]
