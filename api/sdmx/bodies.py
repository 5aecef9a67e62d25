"""Rendered SDMX data messages of published releases, kept in memory (least recently used first out).

A release never changes, and neither does what a ``release=N`` query answers: the cells are stored,
the dataflow version is the one current at publication, the header comes from the request. pysdmx
takes ~100 ms to write a year by district as SDMX-ML, so the second identical request is served from
here. Bounded by the bytes of the bodies kept (``CITYINGEST_SDMX_CACHE_BYTES``; 0 turns it off).
"""

from __future__ import annotations

from collections import OrderedDict
from threading import Lock


class ReleaseBodies:
    """Bodies by request: (path, raw query, media type) -> (body, media type)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._bodies: OrderedDict[tuple[str, str, str], tuple[str, str]] = OrderedDict()
        self._bytes = 0
        self._lock = Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, str, str]) -> tuple[str, str] | None:
        """The body and media type answered to ``key`` before, if still kept."""
        with self._lock:
            found = self._bodies.get(key)
            if found is None:
                self.misses += 1
                return None
            self._bodies.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: tuple[str, str, str], body: str, media: str) -> None:
        """Keep ``body``; the least recently used bodies go when the bound is passed."""
        size = len(body)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._bodies.pop(key, None)
            if old is not None:
                self._bytes -= len(old[0])
            self._bodies[key] = (body, media)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (dropped, _) = self._bodies.popitem(last=False)
                self._bytes -= len(dropped)

    @property
    def size_bytes(self) -> int:
        """Characters of the bodies kept (bytes for the ASCII-only messages pysdmx writes)."""
        return self._bytes
