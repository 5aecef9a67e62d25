"""Opaque, signed keyset cursors: a page ends with the key of its last item; the next page starts after it.

A cursor is ``<payload>.<tag>``: the URL-safe base64 of the JSON list of the last item's sort key, and
a truncated HMAC-SHA256 of the resource name and that payload under the deployment's cursor key
(:mod:`api.cursor_key`). The tag is checked before anything is decoded, so an edited or forged cursor,
or one of another list, is a 400 problem and never reaches a parser or the database.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field

from api.problems import Problem

T = TypeVar("T")

Scalar = str | int | float | None

Limit = Annotated[int, Query(ge=1, le=1000, description="Largest number of items in the page.")]
Cursor = Annotated[
    str | None,
    Query(
        max_length=2000,
        description="The `next_cursor` of the previous page, unchanged; omit for the first page. "
        "Cursors are signed: an edited one is a 400.",
    ),
]
_TAG_BYTES: Final = 16


class Page(BaseModel, Generic[T]):
    """One page of a list; ``next_cursor`` is null on the last page."""

    items: list[T]
    next_cursor: str | None = Field(description="Pass as `cursor` to get the next page; null at the end.")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _bad(resource: str) -> Problem:
    return Problem(
        400,
        "Invalid cursor",
        f"the cursor is not one this API issued for {resource}; pass the `next_cursor` of the previous "
        "page unchanged, or omit `cursor` to start from the first page",
        parameter="cursor",
    )


class Cursors:
    """Issues and checks the cursors of one deployment with its 32-byte signing key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _tag(self, resource: str, payload: str) -> str:
        mac = hmac.new(self._key, f"{resource}\x00{payload}".encode(), hashlib.sha256)
        return _b64(mac.digest()[:_TAG_BYTES])

    def encode(self, resource: str, key: Sequence[Scalar]) -> str:
        """The cursor that resumes ``resource`` after the item whose sort key is ``key``."""
        payload = _b64(json.dumps(list(key), separators=(",", ":")).encode())
        return f"{payload}.{self._tag(resource, payload)}"

    def decode(self, resource: str, cursor: str, arity: int) -> list[Any]:
        """The sort key inside ``cursor``; a 400 problem unless this API signed it for ``resource``."""
        payload, dot, tag = cursor.rpartition(".")
        if not dot or not hmac.compare_digest(tag.encode(), self._tag(resource, payload).encode()):
            raise _bad(resource)
        try:
            key = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (binascii.Error, ValueError, RecursionError):
            # Unreachable with a valid tag unless the signing key leaked; still never a 500.
            raise _bad(resource) from None
        if not isinstance(key, list) or len(key) != arity:
            raise _bad(resource)
        if not all(isinstance(p, str | int | float) or p is None for p in key):
            raise _bad(resource)
        return key

    def page_of(
        self, items: list[T], limit: int, resource: str, key_of: Callable[[T], Sequence[Scalar]]
    ) -> Page[T]:
        """The first ``limit`` of ``items`` (fetched with ``limit + 1`` to know if more follow)."""
        if len(items) <= limit:
            return Page[T](items=items, next_cursor=None)
        kept = items[:limit]
        return Page[T](items=kept, next_cursor=self.encode(resource, key_of(kept[-1])))


def cursor_time(part: Any, resource: str) -> datetime:
    """A UTC time stored in a cursor key; a 400 problem if it is not one."""
    try:
        value = datetime.fromisoformat(str(part))
        if value.tzinfo is None:
            raise _bad(resource)
        return value.astimezone(UTC)
    except (ValueError, OverflowError):
        raise _bad(resource) from None
