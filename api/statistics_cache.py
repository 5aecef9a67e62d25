"""Monthly statistics rows of closed months, kept in memory while the store says they still hold.

A year of statistics by district aggregates 120,000 monthly rollup rows of 10,000 devices (~60 ms of
database CPU), yet eleven of its twelve months are closed and change only when a late reading arrives
or a device is re-described. Each entry is tagged with the version of its month (bumped by the
consumer in the transaction of every batch that changes that month) and the version of the device
registry (bumped by a trigger on every change of a device that moves cells), both read in the same
snapshot as the rows (migration 0009). An entry is served only while both versions are unchanged, so
a reader never sees figures other than those a fresh query would return.

The month in progress is never kept, and neither is anything when the cache is disabled (size 0).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from datetime import datetime
from typing import Any

Tag = tuple[int, int]
"""(month version, device registry version)"""


class StatisticsCache:
    """An LRU of (query key, month) -> rows, bounded by the number of rows it holds."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self._entries: OrderedDict[tuple[Hashable, datetime], tuple[Tag, Sequence[Any]]] = OrderedDict()
        self._rows = 0
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        """Whether anything is kept at all."""
        return self.max_rows > 0

    @property
    def rows(self) -> int:
        """Rows held (each entry counts one more for its key)."""
        return self._rows

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, month: datetime, tag: Tag) -> Sequence[Any] | None:
        """The rows kept for ``key`` and ``month`` if they were computed at ``tag``; else None."""
        entry = self._entries.get((key, month))
        if entry is None or entry[0] != tag:
            self.misses += 1
            return None
        self._entries.move_to_end((key, month))
        self.hits += 1
        return entry[1]

    def put(self, key: Hashable, month: datetime, tag: Tag, rows: Sequence[Any]) -> None:
        """Keep ``rows`` of ``month``, computed at ``tag``, evicting the least recently used."""
        size = len(rows) + 1
        if not self.enabled or size > self.max_rows:
            return
        old = self._entries.pop((key, month), None)
        if old is not None:
            self._rows -= len(old[1]) + 1
        self._entries[(key, month)] = (tag, rows)
        self._rows += size
        while self._rows > self.max_rows:
            _, (_, evicted) = self._entries.popitem(last=False)
            self._rows -= len(evicted) + 1

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()
        self._rows = 0
