"""What the store cannot hold, found before a batch is applied, and the dead letters of it (no I/O).

The store refuses NUL characters in text, and the consumer keeps identifiers short (index entries) and
times inside the one range every stage accepts (``core.readings``). A fault of the record (its device
id, its domain) rejects the whole record; a fault of one reading (its metric, its time) rejects that
reading only: the device got one acknowledgement for all of them, and its good readings are stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final

from core.deadletter import DeadLetter
from core.errors import EnvelopeError
from core.readings import TS_RANGE_TEXT, Envelope, Reading, encode_envelope, ts_in_range
from core.types import MAX_DEVICE_ID_LENGTH, MAX_NAME_LENGTH, RejectReason

_MAX_LISTED: Final = 5
"""Unstorable readings of a record named one by one in its dead letter's message; the rest are counted."""


def _text_fault(value: str, what: str, limit: int = MAX_NAME_LENGTH) -> str | None:
    if len(value) > limit:
        return f"{what} is longer than {limit}"
    if "\x00" in value:
        return f"{what} contains a NUL character"
    return None


@dataclass(frozen=True, slots=True)
class Unstorable:
    """A reading of an envelope the store could not hold, and why; its neighbours are stored."""

    index: int
    """Its position in the envelope's readings."""
    reading: Reading
    reason: RejectReason
    message: str


def split_storable(env: Envelope) -> tuple[list[Reading], list[Unstorable]]:
    """The readings of ``env`` the store can hold, and those it cannot (with the reason of each).

    A fault of the record itself (its device id or domain) makes every reading unstorable: raise
    :class:`EnvelopeError`. A fault of one reading (its metric name, its time) rejects that reading only:
    its neighbours reached a device's acknowledgement together with it, and are good.
    """
    for value, what, limit in (
        (env.device_id, "device id", MAX_DEVICE_ID_LENGTH),
        (env.domain, "domain", MAX_NAME_LENGTH),
    ):
        fault = _text_fault(value, what, limit)
        if fault is not None:
            raise EnvelopeError(RejectReason.ENVELOPE_UNDECODABLE, fault)
    good: list[Reading] = []
    bad: list[Unstorable] = []
    for i, r in enumerate(env.readings):
        fault = _text_fault(r.metric, f"metric {r.metric[:40]!r}")
        if fault is not None:
            bad.append(Unstorable(i, r, RejectReason.ENVELOPE_UNDECODABLE, fault))
        elif not ts_in_range(r.ts_us):
            bad.append(
                Unstorable(i, r, RejectReason.BAD_TIMESTAMP, f"time {r.ts_us} µs is outside {TS_RANGE_TEXT}")
            )
        else:
            good.append(r)
    return good, bad


def reading_dead_letters(
    origin: str, env: Envelope, unstorable: Sequence[Unstorable], *, component_id: str, now_us: int
) -> list[DeadLetter]:
    """The dead letters of one record's unstorable readings: one per reason, never one per reading.

    ``origin`` is the record's ``topic/partition/offset``. Each letter carries only its readings, as an
    envelope of the record's device (replayable once the cause is fixed), so a record of thousands of bad
    readings costs one letter about the size of the record.
    """
    by_reason: dict[RejectReason, list[Unstorable]] = {}
    for u in unstorable:
        by_reason.setdefault(u.reason, []).append(u)
    letters = []
    for reason, group in by_reason.items():
        shown = "; ".join(f"reading {u.index}: {u.message}" for u in group[:_MAX_LISTED])
        more = f"; and {len(group) - _MAX_LISTED} more" if len(group) > _MAX_LISTED else ""
        raw = encode_envelope(replace(env, readings=tuple(u.reading for u in group)))
        letters.append(
            DeadLetter(
                reason=reason.value,
                message=f"{len(group)} of {len(env.readings)} readings not stored: {shown}{more}",
                source="kafka",
                origin=origin,
                raw=raw,
                received_us=now_us,
                component_id=component_id,
                device_id=env.device_id,
            )
        )
    return letters
