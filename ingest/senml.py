"""SenML packs (RFC 8428, JSON representation) resolved into readings.

A pack is a JSON array of records. Base fields (``bn``, ``bt``, ``bu``, ``bv``, ``bs``, ``bver``) apply to
the record that carries them and to every later record until overridden, as RFC 8428 section 4.6 says.

* **Version**: ``bver`` must be an integer; a version above 10 rejects the whole pack
  (``senml_unsupported_version``). A base field of the wrong type rejects the whole pack
  (``senml_invalid``), because it would change the meaning of every following record.
* **Name**: the resolved name is ``bn + n``. If it contains no ``:`` or ``/`` it is the metric. Otherwise
  the part after the last ``:`` or ``/`` is the metric and the part before it names the device: it must be
  the topic's device id, or end with ``:<device_id>`` or ``/<device_id>`` (so ``bn`` may be
  ``"urn:dev:mac:<device_id>:"`` or ``"<device_id>/"``); any other prefix is ``device_mismatch``
  (a device only speaks for itself). Resolved names must match RFC 8428's name syntax (``senml_invalid``).
* **Time**: ``bt + t`` in seconds; a resolved time below 2**28 is relative to the receive time
  (RFC 8428 section 4.5.3). The result must be inside the one range of :mod:`core.readings`, 1970 to 3000
  (``bad_timestamp``). When neither ``t`` nor ``bt`` appears the reading gets the receive time and the
  ``NO_TIMESTAMP`` flag.
* **Value**: ``v`` (plus ``bv``) is the value of a gauge. ``s`` (plus ``bs``) is a sum, i.e. the reading of a
  cumulative meter: it is accepted for ``counter`` metrics and rejected for gauges (``senml_invalid``).
  A counter reported with ``v`` is accepted as the counter value; with both ``v`` and ``s`` the sum wins.
  String, boolean and data values (``vs``, ``vb``, ``vd``) are rejected (``non_numeric_value``).
* **Unit**: ``u``, else ``bu``, else the canonical unit; converted as for the other shapes.
* Fields ending in ``_`` are "must understand" extensions this bridge does not know: the record is rejected
  (``senml_invalid``). Other unknown fields (such as ``ut``) are ignored. A record carrying only base
  fields produces no reading. Each record is validated on its own; rejections name its index.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

from core.errors import RejectedPayload
from core.readings import Reading
from core.types import RejectReason
from ingest.validate import ReadingValidator, Rejection, reject

MAX_SENML_VERSION: Final = 10
RELATIVE_TIME_LIMIT: Final = 2**28
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-:./_]*\Z")
_BASE_FIELDS: Final = frozenset(("bn", "bt", "bu", "bv", "bs", "bver"))
_VALUE_FIELDS: Final = frozenset(("v", "s", "vs", "vb", "vd"))
_NON_NUMERIC_FIELDS: Final = frozenset(("vs", "vb", "vd"))
# Every field RFC 8428 defines; a record with only these skips the must-understand scan.
_KNOWN_FIELDS: Final = _BASE_FIELDS | _VALUE_FIELDS | {"n", "u", "t", "ut"}


def _is_number(value: Any) -> bool:
    try:
        return (type(value) is float or type(value) is int) and math.isfinite(value)
    except OverflowError:  # a JSON integer beyond float range (10**400) is no usable number
        return False


def metric_of(name: str, device_id: str) -> str:
    """The metric named by a resolved SenML name, checking any device prefix against ``device_id``."""
    cut = max(name.rfind(":"), name.rfind("/"))
    if cut < 0:
        return name
    prefix = name[:cut]
    if prefix != device_id and not prefix.endswith((":" + device_id, "/" + device_id)):
        raise reject(
            RejectReason.DEVICE_MISMATCH,
            f"SenML name {name[:96]!r} belongs to another device than {device_id!r}",
        )
    metric = name[cut + 1 :]
    if not metric:
        raise reject(RejectReason.MISSING_FIELD, f"SenML name {name[:96]!r} names no metric")
    return metric


class _Base:
    """The base fields in force while walking a pack."""

    __slots__ = ("bn", "bs", "bt", "bu", "bv", "has_time")

    def __init__(self) -> None:
        self.bn = ""
        self.bt = 0.0
        self.bu: str | None = None
        self.bv = 0.0
        self.bs = 0.0
        self.has_time = False

    def update(self, rec: dict[str, Any], index: int) -> None:
        """Apply the base fields of record ``index``; a malformed one rejects the whole pack."""
        if "bver" in rec:
            bver = rec["bver"]
            if type(bver) is not int:
                raise reject(RejectReason.SENML_INVALID, f"record {index}: bver must be an integer")
            if bver > MAX_SENML_VERSION:
                raise reject(
                    RejectReason.SENML_UNSUPPORTED_VERSION,
                    f"SenML version {bver} is newer than the supported {MAX_SENML_VERSION}",
                )
        if "bn" in rec:
            if type(rec["bn"]) is not str:
                raise reject(RejectReason.SENML_INVALID, f"record {index}: bn must be a string")
            self.bn = rec["bn"]
        if "bu" in rec:
            if type(rec["bu"]) is not str:
                raise reject(RejectReason.SENML_INVALID, f"record {index}: bu must be a string")
            self.bu = rec["bu"]
        for field in ("bt", "bv", "bs"):
            if field in rec:
                if not _is_number(rec[field]):
                    raise reject(RejectReason.SENML_INVALID, f"record {index}: {field} must be a number")
                setattr(self, field, float(rec[field]))
        if "bt" in rec:
            self.has_time = True


def _value(rec: dict[str, Any], base: _Base, kind: str | None, metric: str) -> Any:
    """The record's value: ``v``/``bv`` for gauges, ``s``/``bs`` (else ``v``) for counters."""
    if not _NON_NUMERIC_FIELDS.isdisjoint(rec):
        field = min(_NON_NUMERIC_FIELDS.intersection(rec))
        raise reject(
            RejectReason.NON_NUMERIC_VALUE,
            f"SenML {field} (string, boolean or data value) of {metric!r} is not a numeric reading",
        )
    if "s" in rec and kind != "gauge":
        total = rec["s"]
        return base.bs + total if _is_number(total) else total
    if "s" in rec and "v" not in rec:
        raise reject(RejectReason.SENML_INVALID, f"a sum (s) is only meaningful for counters, not {metric!r}")
    value = rec.get("v")
    return base.bv + value if value is not None and _is_number(value) else value


def _time(rec: dict[str, Any], base: _Base, received_us: int) -> int | None:
    if "t" not in rec:
        if not base.has_time:
            return None
        t = 0.0
    else:
        t = rec["t"]
        if not _is_number(t):
            raise reject(RejectReason.BAD_TIMESTAMP, "SenML t must be a number of seconds")
    resolved = base.bt + t
    # bt and t are finite, their sum in microseconds need not be (bt: 1e303); the validator checks the
    # resulting time against the one range every stage accepts.
    resolved_us = resolved * 1_000_000
    if not math.isfinite(resolved_us):
        raise reject(RejectReason.BAD_TIMESTAMP, "SenML time is not finite")
    if resolved < RELATIVE_TIME_LIMIT:
        return received_us + round(resolved_us)
    return round(resolved_us)


def resolve_pack(
    pack: list[Any], device_id: str, received_us: int, validator: ReadingValidator
) -> tuple[list[Reading], list[Rejection]]:
    """Resolve every record of a SenML pack; raise RejectedPayload only for pack-level faults."""
    if not pack:
        raise reject(RejectReason.EMPTY_BATCH, "SenML pack has no records")
    base = _Base()
    readings: list[Reading] = []
    rejections: list[Rejection] = []
    metrics: dict[str, str] = {}  # resolved name -> metric; packs repeat their names
    for index, rec in enumerate(pack):
        if type(rec) is not dict:
            rejections.append(
                Rejection(RejectReason.SENML_INVALID.value, f"record {index}: not an object", index, rec)
            )
            continue
        if not _BASE_FIELDS.isdisjoint(rec):
            base.update(rec, index)
        try:
            reading = _record(rec, base, device_id, received_us, validator, metrics)
        except RejectedPayload as exc:
            rejections.append(Rejection(exc.reason.value, f"record {index}: {exc.message}", index, rec))
            continue
        if reading is not None:
            readings.append(reading)
    if not readings and not rejections:
        raise reject(RejectReason.EMPTY_BATCH, "SenML pack has only base fields and no record with a value")
    return readings, rejections


def _record(
    rec: dict[str, Any],
    base: _Base,
    device_id: str,
    received_us: int,
    validator: ReadingValidator,
    metrics: dict[str, str],
) -> Reading | None:
    if not _KNOWN_FIELDS.issuperset(rec):
        for key in rec:
            if key.endswith("_"):
                raise reject(
                    RejectReason.SENML_INVALID, f"must-understand field {key[:32]!r} is not supported"
                )
    name = rec.get("n", "")
    if type(name) is not str:
        raise reject(RejectReason.SENML_INVALID, "n must be a string")
    if "n" not in rec and _VALUE_FIELDS.isdisjoint(rec):
        if not _BASE_FIELDS.isdisjoint(rec):
            return None  # a record that only sets base fields for the ones after it
        raise reject(RejectReason.SENML_INVALID, "record has neither a name nor a value")
    full = base.bn + name
    metric = metrics.get(full)
    if metric is None:
        if not full:
            raise reject(RejectReason.MISSING_FIELD, "record has no name (bn + n is empty)")
        if _NAME_RE.match(full) is None:
            raise reject(RejectReason.SENML_INVALID, f"name {full[:96]!r} is not a valid SenML name")
        metric = metrics[full] = metric_of(full, device_id)
    value = _value(rec, base, validator.kind(metric), metric)
    unit = rec.get("u", base.bu)
    return validator.reading(metric, value, unit, _time(rec, base, received_us), received_us)
