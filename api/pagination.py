"""Opaque keyset cursors: a page ends with the key of its last item; the next page starts after it.

A cursor is the URL-safe base64 of a small JSON document ``{"r": <resource>, "k": [<key parts>]}``.
It is opaque to clients (they only send it back) and checked on the way in: a cursor of another list,
or one that was edited, is a 400 problem rather than a wrong page.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field

from api.problems import Problem

T = TypeVar("T")

Scalar = str | int | float | None

Limit = Annotated[int, Query(ge=1, le=1000, description="Largest number of items in the page.")]
Cursor = Annotated[
    str | None,
    Query(max_length=2000, description="The `next_cursor` of the previous page; omit for the first page."),
]


class Page(BaseModel, Generic[T]):
    """One page of a list; ``next_cursor`` is null on the last page."""

    items: list[T]
    next_cursor: str | None = Field(description="Pass as `cursor` to get the next page; null at the end.")


def encode_cursor(resource: str, key: Sequence[Scalar]) -> str:
    """The cursor that resumes ``resource`` after the item whose sort key is ``key``."""
    raw = json.dumps({"r": resource, "k": list(key)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _bad(resource: str) -> Problem:
    return Problem(
        400,
        "Invalid cursor",
        f"the cursor is not one this API issued for {resource}; pass the `next_cursor` of the previous "
        "page unchanged, or omit `cursor` to start from the first page",
    )


def decode_cursor(resource: str, cursor: str, arity: int) -> list[Any]:
    """The sort key inside ``cursor``; a 400 problem unless it is ``resource``'s with ``arity`` parts."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        doc = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise _bad(resource) from None
    if not isinstance(doc, dict) or doc.get("r") != resource:
        raise _bad(resource)
    key = doc.get("k")
    if not isinstance(key, list) or len(key) != arity:
        raise _bad(resource)
    if not all(isinstance(p, str | int | float) or p is None for p in key):
        raise _bad(resource)
    return key


def cursor_time(part: Any, resource: str) -> datetime:
    """A time stored in a cursor key; a 400 problem if it is not one."""
    try:
        value = datetime.fromisoformat(str(part))
    except ValueError:
        raise _bad(resource) from None
    if value.tzinfo is None:
        raise _bad(resource)
    return value


def page_of(items: list[T], limit: int, resource: str, key_of: Any) -> Page[T]:
    """The page of the first ``limit`` of ``items`` (fetched with ``limit + 1`` to know if more follow)."""
    if len(items) <= limit:
        return Page[T](items=items, next_cursor=None)
    kept = items[:limit]
    return Page[T](items=kept, next_cursor=encode_cursor(resource, key_of(kept[-1])))
