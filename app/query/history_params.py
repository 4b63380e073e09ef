"""The parameters of GET /stats: filters, rollups and keyset cursors, validated."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, pre_load
from marshmallow.validate import OneOf

# 5m sums raw windows; 1h and 1d read the hourly and daily rollups; 1mo
# (calendar months, UTC) reads the daily rollups (docs/stats-table.md, "Rollups").
BUCKETS = ("5m", "1h", "1d", "1mo")
FORMATS = ("json", "csv")
GROUPS = {"customer": (True, False), "content": (False, True), "customer,content": (True, True)}
MAX_LIMIT = 1000
# A cursor this service wrote is some 100 characters plus the names (256
# characters each at most, 4 bytes each in UTF-8, base64: 4/3).
MAX_CURSOR = 4096


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
    format: str | None = None  # json or csv; None: as the Accept header asks

    @property
    def rollup(self) -> bool:
        return self.group_by is not None or self.bucket is not None


def parse_time(text: str) -> datetime:
    """An ISO 8601 instant; without an offset it is UTC. Raises ValueError,
    also for an instant outside years 1..9999 once in UTC
    (``9999-12-31T23:59:59-01:00``)."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    text = text.strip().replace("Z", "+00:00").replace("z", "+00:00")
    # An unescaped '+' in a query string arrives as a space: "...T10:00:00 02:00".
    text = re.sub(r" (\d\d(:?\d\d)?)$", r"+\1", text)
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    # In UTC: PostgreSQL refuses offsets beyond 15:59 that Python accepts.
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("out of range once in UTC") from None


def is_text(value: Any) -> bool:
    """A string PostgreSQL can take: no NUL, and valid UTF-8 (no lone surrogate)."""
    if not isinstance(value, str) or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def encode_cursor(query: Query, row: tuple) -> str:
    raw = json.dumps([row[0].isoformat(), row[1], row[2], query.group_by, query.bucket])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(text: str, group_by: str | None, bucket: str | None) -> tuple:
    """The (time, customer, content) a page ended at. Raises ValidationError.

    Whatever the text holds (any bytes, any JSON, deep nesting, NUL, lone
    surrogates, times out of range), the answer is a value or ValidationError.
    """
    try:
        if len(text) > MAX_CURSOR:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        parts = json.loads(raw)
        if not (isinstance(parts, list) and len(parts) == 5):
            raise ValueError("not a cursor")
        t, customer, content, g, b = parts
        if not (is_text(t) and is_text(customer) and is_text(content)):
            raise ValueError("not a cursor")
        after = (parse_time(t), customer, content)
    except (ValueError, TypeError, binascii.Error, RecursionError):
        # UnicodeDecodeError and json's errors are ValueErrors.
        raise ValidationError("Not a cursor returned by this endpoint.", "cursor") from None
    if (g, b) != (group_by, bucket):
        raise ValidationError("The cursor belongs to another group_by/bucket.", "cursor")
    return after


class Instant(fields.DateTime):
    """An ISO 8601 date-time; UTC when it has no offset."""

    default_error_messages = {"invalid": "Not an ISO 8601 date-time, e.g. 2026-11-26T10:00:00Z."}

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> datetime:
        try:
            return parse_time(value)
        except ValueError:
            raise self.make_error("invalid") from None


class Limit(fields.Integer):
    """Rows per page: plain ASCII digits only (no sign, no spaces, no "²")."""

    default_error_messages = {"invalid": f"Must be an integer from 1 to {MAX_LIMIT}."}

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> int:
        if not (isinstance(value, str) and value.isascii() and value.isdigit()):
            raise self.make_error("invalid")
        number = int(value)
        if not 1 <= number <= MAX_LIMIT:
            raise self.make_error("invalid")
        return number


def no_nul(value: str) -> None:
    """A filter PostgreSQL can compare: no NUL, no lone surrogate."""
    if not is_text(value):
        raise ValidationError("Must not contain NUL characters or lone surrogates.")


class HistoryArgs(Schema):
    """The query parameters of GET /stats; loads into a :class:`Query`."""

    class Meta:
        unknown = EXCLUDE

    customer = fields.String(validate=no_nul, metadata={"description": "Only this customer"})
    content = fields.String(validate=no_nul, metadata={"description": "Only this content"})
    start = Instant(
        data_key="from",
        metadata={"description": "Window ends at or after this ISO 8601 time (UTC if no offset)"},
    )
    end = Instant(data_key="to", metadata={"description": "Window ends before this time"})
    order = fields.String(
        load_default="asc",
        validate=OneOf(("asc", "desc"), error="Must be asc or desc."),
        metadata={"description": "By time, then customer, then content"},
    )
    limit = Limit(load_default=100, metadata={"description": "Rows per page (1..1000)"})
    cursor = fields.String(metadata={"description": "The `next` value of the previous page"})
    group_by = fields.String(
        validate=OneOf(tuple(GROUPS), error=f"Must be one of {', '.join(GROUPS)}."),
        metadata={"description": "Sum rows over the other column"},
    )
    bucket = fields.String(
        validate=OneOf(BUCKETS, error=f"Must be one of {', '.join(BUCKETS)}."),
        metadata={
            "description": "Sum rows into UTC buckets (1mo: calendar months), stamped with "
            "the bucket start"
        },
    )
    format = fields.String(
        validate=OneOf(FORMATS, error=f"Must be one of {', '.join(FORMATS)}."),
        metadata={
            "description": "csv: every matching row as CSV, streamed (as `Accept: text/csv`); "
            "default json, one page"
        },
    )

    @pre_load
    def drop_empty(self, data: Any, **kwargs: Any) -> dict[str, Any]:
        # An empty filter means no filter; an empty limit is still an error.
        return {k: v for k, v in data.items() if v != "" or k == "limit"}

    @post_load
    def make_query(self, data: dict[str, Any], **kwargs: Any) -> Query:
        order = data.pop("order")
        cursor = data.pop("cursor", None)
        if cursor is not None:
            data["after"] = decode_cursor(cursor, data.get("group_by"), data.get("bucket"))
        query = Query(descending=order == "desc", **data)
        if query.start and query.end and query.start > query.end:
            raise ValidationError("Must not be later than 'to'.", "from")
        return query
