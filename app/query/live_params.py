"""The parameters of GET /stats/live, validated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from marshmallow import EXCLUDE, Schema, fields, post_load, pre_load

from .history_params import no_nul


@dataclass(frozen=True)
class LiveQuery:
    customer: str | None = None
    content: str | None = None


class LiveArgs(Schema):
    """The query parameters of GET /stats/live; loads into a :class:`LiveQuery`."""

    class Meta:
        unknown = EXCLUDE

    customer = fields.String(validate=no_nul, metadata={"description": "Only this customer"})
    content = fields.String(validate=no_nul, metadata={"description": "Only this content"})

    @pre_load
    def drop_empty(self, data: Any, **kwargs: Any) -> dict[str, Any]:
        return {k: v for k, v in data.items() if v != ""}

    @post_load
    def make_query(self, data: dict[str, Any], **kwargs: Any) -> LiveQuery:
        return LiveQuery(**data)
