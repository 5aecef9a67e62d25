"""What applying a batch changed, and whether the next one should try the plain insertion (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

_MAX_PAUSE: Final = 64
"""Most batches applied the general way after one that met stored readings."""


@dataclass(frozen=True, slots=True)
class Applied:
    """What one applied batch changed."""

    inserted: int
    """Readings new to the store (folded into the rollups)."""
    duplicates: int
    """Readings already stored (retransmissions), including duplicates within the batch."""
    corrected: int
    """Stored counter readings whose increase changed because a late reading arrived before them."""
    stored: int = 0
    """Readings of the batch the store held already (the rest of ``duplicates`` were in-batch)."""


class InsertMode:
    """Whether the next batch should try the plain insertion (``apply_batch(assume_new=True)``).

    Yes, unless batches keep meeting readings the store holds already: one such batch now and then (a
    retransmission spanning two batches) costs one failed attempt, but a run of them (a replay, two
    consumers during a rebalance) makes the following 1, 2, 4 ... 64 batches skip the attempt.
    """

    def __init__(self) -> None:
        self._skip = 0
        self._pause = 0

    def assume_new(self) -> bool:
        """Whether to try the plain insertion now."""
        return self._skip == 0

    def record(self, applied: Applied) -> None:
        """Learn from a batch just applied."""
        if applied.stored:
            self._skip = self._pause
            self._pause = min(2 * self._pause or 1, _MAX_PAUSE)
        elif self._skip:
            self._skip -= 1
        else:
            self._pause = 0
