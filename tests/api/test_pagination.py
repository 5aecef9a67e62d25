"""Opaque cursors: round trip, and refusal of anything this API did not issue."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.pagination import decode_cursor, encode_cursor, page_of
from api.problems import Problem

keys = st.lists(st.one_of(st.text(max_size=20), st.integers(), st.none()), min_size=1, max_size=4)


@given(keys)
def test_round_trip(key: list[str | int | None]) -> None:
    assert decode_cursor("devices", encode_cursor("devices", key), len(key)) == key


@pytest.mark.parametrize(
    "cursor",
    [
        "!!!",
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(b"[1]").decode(),
        encode_cursor("series", ["x"]),  # another list's cursor
        encode_cursor("devices", ["x", "y"]),  # wrong arity
        base64.urlsafe_b64encode(b'{"r":"devices","k":[{"a":1}]}').decode(),
    ],
)
def test_foreign_or_edited_cursors_are_a_400(cursor: str) -> None:
    with pytest.raises(Problem) as info:
        decode_cursor("devices", cursor, 1)
    assert info.value.status == 400


def test_page_of() -> None:
    page = page_of([1, 2, 3], 2, "n", lambda i: [i])
    assert page.items == [1, 2]
    assert page.next_cursor is not None
    assert decode_cursor("n", page.next_cursor, 1) == [2]
    assert page_of([1, 2], 2, "n", lambda i: [i]).next_cursor is None
