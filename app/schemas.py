"""The payload schema (SPEC section 1): marshmallow, no I/O."""

from __future__ import annotations

import unicodedata
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

MAX_BYTES = 10**12  # 1 TB in one payload
MAX_SAFE_INTEGER = 2**53 - 1

# Control characters, lone surrogates (not encodable as UTF-8) and line or
# paragraph separators have no place in a name that ends up in a report.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


class StrictInteger(fields.Integer):
    """A JSON integer: not a float (1.0), not a string ("1"), not a boolean."""

    def __init__(self, maximum: int, **kwargs: Any) -> None:
        super().__init__(
            strict=True,
            required=True,
            validate=validate.Range(min=0, max=maximum),
            **kwargs,
        )

    def _validated(self, value: Any) -> int:
        if isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return super()._validated(value)


def printable(value: str) -> None:
    for ch in value:
        if unicodedata.category(ch) in _FORBIDDEN_CATEGORIES:
            raise ValidationError(
                f"Must be printable text: character U+{ord(ch):04X} is not allowed."
            )


class Text(fields.String):
    """A required string of 1..``max_length`` printable characters."""

    def __init__(self, max_length: int, **kwargs: Any) -> None:
        super().__init__(
            required=True,
            validate=[validate.Length(min=1, max=max_length), printable],
            **kwargs,
        )


class PayloadSchema(Schema):
    """One device payload. Unknown fields are ignored (newer firmware)."""

    class Meta:
        unknown = EXCLUDE

    token = Text(128)
    customer = Text(256)
    content = Text(256)
    timespan = StrictInteger(MAX_SAFE_INTEGER)
    p2p = StrictInteger(MAX_BYTES)
    cdn = StrictInteger(MAX_BYTES)
    sessionDuration = StrictInteger(MAX_SAFE_INTEGER)  # noqa: N815 (the wire name)
