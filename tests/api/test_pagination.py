"""Signed cursors: round trip, and refusal of anything this API did not issue, before any parsing."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.pagination import Cursors
from api.problems import Problem

keys = st.lists(st.one_of(st.text(max_size=20), st.integers(), st.none()), min_size=1, max_size=4)
CURSORS = Cursors(b"k" * 32)


def forged(payload: bytes) -> str:
    """A cursor holding ``payload`` with a tag of another key: what an attacker can build."""
    text = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    return f"{text}.{Cursors(b'x' * 32).encode('devices', ['a']).rpartition('.')[2]}"


@given(keys)
def test_round_trip(key: list[str | int | None]) -> None:
    assert CURSORS.decode("devices", CURSORS.encode("devices", key), len(key)) == key


@pytest.mark.parametrize(
    "cursor",
    [
        "!!!",
        "",
        ".",
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(b"[1]").decode(),
        CURSORS.encode("series", ["x"]),  # another list's cursor
        CURSORS.encode("devices", ["x", "y"]),  # wrong arity
        Cursors(b"o" * 32).encode("devices", ["x"]),  # another deployment's key
        CURSORS.encode("devices", ["x"])[:-2] + "AA",  # edited tag (it ends in "2A")
        "W10" + CURSORS.encode("devices", ["x"])[3:],  # edited payload
        forged(b"[" * 1400),  # a RecursionError in json once
        forged(b'["0001-01-01T00:00:00+14:00","","",""]'),
    ],
)
def test_foreign_or_edited_cursors_are_a_400(cursor: str) -> None:
    with pytest.raises(Problem) as info:
        CURSORS.decode("devices", cursor, 1)
    assert info.value.status == 400
    assert info.value.extra == {"parameter": "cursor"}


def test_page_of() -> None:
    page = CURSORS.page_of([1, 2, 3], 2, "n", lambda i: [i])
    assert page.items == [1, 2]
    assert page.next_cursor is not None
    assert CURSORS.decode("n", page.next_cursor, 1) == [2]
    assert CURSORS.page_of([1, 2], 2, "n", lambda i: [i]).next_cursor is None
