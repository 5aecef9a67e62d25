"""Validation of one reading against the metric catalogue, shared by every payload shape.

Rules (in this order; the first failing rule names the rejection):

* ``metric`` must be a non-empty string (``missing_field``) naming a catalogue metric (``unknown_metric``);
* ``value`` must be present (``missing_field``), a JSON number, not a boolean or string
  (``non_numeric_value``), and finite after unit conversion (``non_finite_value``);
* ``unit`` is optional; when given and different from the metric's canonical unit it is converted when the
  catalogue knows the conversion (flag ``UNIT_CONVERTED`` unless the unit is only spelled differently)
  and rejected otherwise (``unit_mismatch``);
* a time outside the one range every stage accepts (:data:`core.readings.TS_RANGE_TEXT`, 1970 to 3000)
  is rejected (``bad_timestamp``), whatever shape or field it came from; a time more than
  ``max_future_skew_s`` after the receive time is rejected (``future_timestamp``); a reading without time
  gets the receive time and the flag ``NO_TIMESTAMP``;
* a value outside the metric's plausible ``[min, max]`` is kept and flagged ``OUT_OF_RANGE``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from core.catalogue import Catalogue, UnitConversion
from core.errors import RejectedPayload
from core.readings import TS_RANGE_TEXT, Reading, to_us, ts_in_range
from core.types import ReadingFlag, RejectReason

_OUT_OF_RANGE: Final = int(ReadingFlag.OUT_OF_RANGE)
_NO_TIMESTAMP: Final = int(ReadingFlag.NO_TIMESTAMP)
_UNIT_CONVERTED: Final = int(ReadingFlag.UNIT_CONVERTED)
_INF: Final = math.inf

# Epoch numbers below 1e11 are seconds (1e11 s is the year 5138), below 1e14 milliseconds.
_SECONDS_BELOW: Final = 1e11
_MILLIS_BELOW: Final = 1e14


def reject(reason: RejectReason, message: str) -> RejectedPayload:
    """A :class:`RejectedPayload` carrying a reason code from :class:`RejectReason`."""
    return RejectedPayload(reason, message)


@dataclass(frozen=True, slots=True)
class Rejection:
    """One reading or SenML record of an otherwise accepted payload that was rejected."""

    reason: str
    message: str
    index: int
    """Position of the reading in the batch or of the record in the SenML pack."""
    parsed: Any
    """The rejected reading or record as parsed: serialised only on demand (:attr:`item`), because a
    message may hold thousands of rejected readings and its dead letter carries the payload instead."""

    @property
    def item(self) -> bytes:
        """The rejected reading or record as compact JSON."""
        return dump_item(self.parsed)


def dump_item(item: Any) -> bytes:
    """Compact JSON of a parsed item for a dead letter; keeps NaN, huge integers and lone surrogates."""
    try:
        return json.dumps(item, separators=(",", ":")).encode("ascii")
    except (RecursionError, ValueError):
        return repr(item).encode("utf-8", "backslashreplace")


def parse_timestamp(raw: Any) -> int:
    """An RFC 3339 string or epoch seconds/milliseconds -> microseconds since the epoch."""
    if type(raw) is str:
        try:
            dt = datetime.fromisoformat(raw)
        except ValueError:
            raise reject(RejectReason.BAD_TIMESTAMP, f"timestamp {raw[:64]!r} is not RFC 3339") from None
        if dt.tzinfo is None:
            raise reject(RejectReason.BAD_TIMESTAMP, f"timestamp {raw[:64]!r} has no 'Z' or UTC offset")
        return to_us(dt)
    if type(raw) is int or type(raw) is float:
        if not 0 <= raw < _MILLIS_BELOW:
            raise reject(
                RejectReason.BAD_TIMESTAMP, f"epoch timestamp {raw!r} is negative, not finite or not s/ms"
            )
        return round(raw * 1_000_000) if raw < _SECONDS_BELOW else round(raw * 1_000)
    raise reject(RejectReason.BAD_TIMESTAMP, "timestamp must be an RFC 3339 string or epoch s/ms number")


class ReadingValidator:
    """Turns (metric, value, unit, time) into a canonical :class:`Reading` or raises RejectedPayload."""

    __slots__ = ("_conversions", "_kinds", "_skew_us", "_specs")

    def __init__(self, catalogue: Catalogue, max_future_skew_s: float) -> None:
        # Plain dicts: the hot path looks metrics up once per reading.
        self._specs = {
            name: (spec.unit, -_INF if spec.min is None else spec.min, _INF if spec.max is None else spec.max)
            for name, spec in catalogue.items()
        }
        self._kinds = {name: spec.kind for name, spec in catalogue.items()}
        self._conversions: dict[tuple[str, str], UnitConversion] = dict(catalogue.conversions())
        self._skew_us = round(max_future_skew_s * 1_000_000)

    def kind(self, metric: str) -> str | None:
        """``gauge`` or ``counter``, or None for a metric the catalogue does not know."""
        return self._kinds.get(metric)

    def reading(self, metric: Any, value: Any, unit: Any, ts_us: int | None, received_us: int) -> Reading:
        """Validate one reading; ``ts_us`` None means the device sent no time."""
        if type(metric) is not str or not metric:
            raise reject(RejectReason.MISSING_FIELD, "reading has no 'metric' string")
        spec = self._specs.get(metric)
        if spec is None:
            raise reject(RejectReason.UNKNOWN_METRIC, f"metric {metric[:64]!r} is not in the catalogue")
        canonical, low, high = spec
        if value is None:
            raise reject(RejectReason.MISSING_FIELD, f"reading of {metric!r} has no value")
        value_type = type(value)
        if value_type is not float and value_type is not int:
            raise reject(
                RejectReason.NON_NUMERIC_VALUE,
                f"value of {metric!r} must be a number, got {value_type.__name__}",
            )
        flags = 0
        try:
            number = float(value)
            if unit is not None and unit != canonical:
                if type(unit) is not str:
                    raise reject(RejectReason.UNIT_MISMATCH, f"unit of {metric!r} must be a string")
                conversion = self._conversions.get((unit, canonical))
                if conversion is None:
                    raise reject(
                        RejectReason.UNIT_MISMATCH,
                        f"unit {unit[:32]!r} of {metric!r} cannot be converted to {canonical!r}",
                    )
                if not conversion.is_alias:
                    number = conversion.apply(number)
                    flags |= _UNIT_CONVERTED
        except OverflowError:
            number = _INF
        if not math.isfinite(number):
            raise reject(RejectReason.NON_FINITE_VALUE, f"value of {metric!r} is not a finite number")
        if ts_us is None:
            ts_us = received_us
            flags |= _NO_TIMESTAMP
        elif not ts_in_range(ts_us):
            # The one place every parsed time passes: the consumer and the store take only this range, and
            # a time far outside it does not even fit the envelope's 64-bit integer.
            raise reject(RejectReason.BAD_TIMESTAMP, f"time of {metric!r} is outside {TS_RANGE_TEXT}")
        elif ts_us - received_us > self._skew_us:
            raise reject(
                RejectReason.FUTURE_TIMESTAMP,
                f"reading of {metric!r} is {(ts_us - received_us) / 1e6:.1f} s in the future",
            )
        if number < low or number > high:
            flags |= _OUT_OF_RANGE
        return Reading(metric, ts_us, number, flags)
