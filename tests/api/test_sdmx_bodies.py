"""The memory of rendered release messages: bounded by bytes, least recently used out first."""

from __future__ import annotations

from api.sdmx.bodies import ReleaseBodies


def test_bodies_are_kept_until_the_byte_bound_drops_the_least_recently_used() -> None:
    bodies = ReleaseBodies(max_bytes=10)
    bodies.put(("/a", "", "csv"), "aaaa", "text/csv")
    bodies.put(("/b", "", "csv"), "bbbb", "text/csv")
    assert bodies.get(("/a", "", "csv")) == ("aaaa", "text/csv")  # /a is now the most recent
    bodies.put(("/c", "", "csv"), "cccc", "text/csv")  # 12 > 10: /b, the least recent, goes
    assert bodies.get(("/b", "", "csv")) is None
    assert bodies.get(("/a", "", "csv")) == ("aaaa", "text/csv")
    assert bodies.get(("/c", "", "csv")) == ("cccc", "text/csv")
    assert bodies.size_bytes == 8
    assert (bodies.hits, bodies.misses) == (3, 1)


def test_a_body_larger_than_the_bound_or_a_zero_bound_keeps_nothing() -> None:
    bodies = ReleaseBodies(max_bytes=3)
    bodies.put(("/a", "", "csv"), "aaaa", "text/csv")
    assert bodies.get(("/a", "", "csv")) is None
    off = ReleaseBodies(max_bytes=0)
    off.put(("/a", "", "csv"), "", "text/csv")
    off.put(("/b", "", "csv"), "b", "text/csv")
    assert off.get(("/b", "", "csv")) is None
    assert off.size_bytes == 0


def test_the_same_key_replaces_its_body() -> None:
    bodies = ReleaseBodies(max_bytes=100)
    bodies.put(("/a", "q", "xml"), "one", "application/xml")
    bodies.put(("/a", "q", "xml"), "three", "application/xml")
    assert bodies.get(("/a", "q", "xml")) == ("three", "application/xml")
    assert bodies.size_bytes == 5
