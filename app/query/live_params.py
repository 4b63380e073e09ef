"""The parameters of GET /stats/live, validated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from marshmallow import EXCLUDE, Schema, fields, post_load, pre_load
from marshmallow.validate import Length

from .history_params import Limit, no_nul


@dataclass(frozen=True)
class LiveQuery:
    customer: str | None = None
    content: str | None = None
    limit: int = 100
    search: str | None = None


class LiveArgs(Schema):
    """The query parameters of GET /stats/live; loads into a :class:`LiveQuery`."""

    class Meta:
        unknown = EXCLUDE

    customer = fields.String(validate=no_nul, metadata={"description": "Only this customer"})
    content = fields.String(validate=no_nul, metadata={"description": "Only this content"})
    limit = Limit(
        load_default=100, metadata={"description": "Rows, the most traffic first (1..1000)"}
    )
    search = fields.String(
        validate=[no_nul, Length(max=256)],
        metadata={"description": "Only rows whose customer or content contains this (any case)"},
    )

    @pre_load
    def drop_empty(self, data: Any, **kwargs: Any) -> dict[str, Any]:
        # An empty filter means no filter; an empty limit is still an error.
        return {k: v for k, v in data.items() if v != "" or k == "limit"}

    @post_load
    def make_query(self, data: dict[str, Any], **kwargs: Any) -> LiveQuery:
        return LiveQuery(**data)
