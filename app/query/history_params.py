"""The parameters of GET /stats: filters, rollups and keyset cursors, validated."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

BUCKETS = {"5m": "5 minutes", "1h": "1 hour", "1d": "1 day"}
GROUPS = {"customer": (True, False), "content": (False, True), "customer,content": (True, True)}
MAX_LIMIT = 1000


class QueryError(ValueError):
    """A query parameter is invalid; ``fields`` maps each one to its messages."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        super().__init__(fields)
        self.fields = fields


@dataclass(frozen=True)
class Query:
    customer: str | None = None
    content: str | None = None
    start: datetime | None = None  # inclusive, on the window end
    end: datetime | None = None  # exclusive
    limit: int = 100
    descending: bool = False
    group_by: str | None = None
    bucket: str | None = None
    after: tuple[datetime, str, str] | None = None

    @property
    def rollup(self) -> bool:
        return self.group_by is not None or self.bucket is not None


def parse_time(text: str) -> datetime:
    """An ISO 8601 instant; without an offset it is UTC. Raises ValueError."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    text = text.strip().replace("Z", "+00:00").replace("z", "+00:00")
    # An unescaped '+' in a query string arrives as a space: "...T10:00:00 02:00".
    text = re.sub(r" (\d\d(:?\d\d)?)$", r"+\1", text)
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    # In UTC: PostgreSQL refuses offsets beyond 15:59 that Python accepts.
    return value.astimezone(timezone.utc)


def encode_cursor(query: Query, row: tuple) -> str:
    raw = json.dumps([row[0].isoformat(), row[1], row[2], query.group_by, query.bucket])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(text: str, group_by: str | None, bucket: str | None) -> tuple:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        t, customer, content, g, b = json.loads(raw)
        if not (isinstance(customer, str) and isinstance(content, str)):
            raise ValueError
        after = (parse_time(t), customer, content)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise QueryError({"cursor": ["Not a cursor returned by this endpoint."]}) from None
    if (g, b) != (group_by, bucket):
        raise QueryError({"cursor": ["The cursor belongs to another group_by/bucket."]})
    return after


def parse_query(args: dict[str, str]) -> Query:
    """A Query from request arguments. Raises QueryError naming every bad one."""
    errors: dict[str, list[str]] = {}
    values: dict[str, Any] = {}
    for name in ("customer", "content"):
        if args.get(name):
            if "\x00" in args[name]:
                errors[name] = ["Must not contain NUL characters."]
            values[name] = args[name]
    for name, attr in (("from", "start"), ("to", "end")):
        if args.get(name):
            try:
                values[attr] = parse_time(args[name])
            except ValueError:
                errors[name] = ["Not an ISO 8601 date-time, e.g. 2026-11-26T10:00:00Z."]
    if "limit" in args:
        text = args["limit"]
        if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
            errors["limit"] = [f"Must be an integer from 1 to {MAX_LIMIT}."]
        else:
            values["limit"] = int(text)
    order = args.get("order", "asc")
    if order not in ("asc", "desc"):
        errors["order"] = ["Must be asc or desc."]
    values["descending"] = order == "desc"
    if args.get("group_by"):
        if args["group_by"] not in GROUPS:
            errors["group_by"] = [f"Must be one of {', '.join(GROUPS)}."]
        values["group_by"] = args["group_by"]
    if args.get("bucket"):
        if args["bucket"] not in BUCKETS:
            errors["bucket"] = [f"Must be one of {', '.join(BUCKETS)}."]
        values["bucket"] = args["bucket"]
    if errors:
        raise QueryError(errors)
    if args.get("cursor"):
        values["after"] = _decode_cursor(
            args["cursor"], values.get("group_by"), values.get("bucket")
        )
    query = Query(**values)
    if query.start and query.end and query.start > query.end:
        raise QueryError({"from": ["Must not be later than 'to'."]})
    return query
