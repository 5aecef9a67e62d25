"""Device payloads -> validated readings: the pure (no I/O) heart of the bridge.

Contract with devices:

* **Topic** ``<prefix>/<domain>/<device_id>/telemetry``; ``domain`` must be one of the configured domains
  (``unknown_domain``), anything else is ``bad_topic``. The device id comes from the topic; a payload
  naming another device (``device`` or ``device_id`` field, or a SenML name prefix) is ``device_mismatch``.
* **Payload** UTF-8 JSON (``not_utf8``, ``invalid_json``) of at most ``max_payload_bytes``
  (``payload_too_large``, checked before parsing), in one of three shapes detected by form:

  - one reading, an object with ``metric``/``value``:
    ``{"metric": "water_flow", "value": 12.5, "ts": "2026-11-22T10:00:00Z", "unit": "m3/h"}``;
    if it is invalid the whole payload is rejected;
  - a batch ``{"readings": [<reading>, ...]}`` (``empty_batch`` when empty); each reading is validated on
    its own, so one bad reading does not take its neighbours down;
  - a SenML pack, a JSON array (see :mod:`ingest.senml`).

  Anything else is ``unknown_shape``. ``ts`` is RFC 3339 with ``Z`` or an offset, or epoch seconds
  (below 1e11) or milliseconds (below 1e14), inside :data:`core.readings.TS_RANGE_TEXT` like every
  reading time; otherwise ``bad_timestamp``. Validation of each reading is in
  :mod:`ingest.validate`. Numbers JSON cannot carry (``NaN``, ``Infinity``, ``1e400``) are read leniently so
  that only the affected reading is rejected (``non_finite_value``).

Whole-payload faults raise :class:`core.errors.RejectedPayload`; per-reading faults are returned as
:class:`ingest.validate.Rejection` next to the envelope of the valid readings.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from core.catalogue import Catalogue
from core.errors import RejectedPayload
from core.readings import Envelope, Reading
from core.topics import TELEMETRY_SUFFIX
from core.types import DEFAULT_DOMAINS, MAX_DEVICE_ID_LENGTH, RejectReason
from ingest.senml import resolve_pack
from ingest.validate import ReadingValidator, Rejection, parse_timestamp, reject


@dataclass(frozen=True, slots=True)
class ParseResult:
    """The valid readings of one payload (None when there are none) and its rejected readings."""

    domain: str
    device_id: str
    envelope: Envelope | None
    rejections: tuple[Rejection, ...]


class PayloadParser:
    """Parses device payloads for one bridge; build it once, call :meth:`parse` per MQTT message."""

    def __init__(
        self,
        catalogue: Catalogue,
        *,
        bridge_id: str,
        topic_prefix: str = "city",
        domains: Iterable[str] = DEFAULT_DOMAINS,
        max_payload_bytes: int = 262_144,
        max_future_skew_s: float = 300.0,
    ) -> None:
        self._validator = ReadingValidator(catalogue, max_future_skew_s)
        self._bridge_id = bridge_id
        self._prefix = topic_prefix.rstrip("/") + "/"
        self._domains = frozenset(domains)
        self._max_bytes = max_payload_bytes

    def parse_topic(self, topic: str) -> tuple[str, str]:
        """``(domain, device_id)`` of a telemetry topic, or RejectedPayload (bad_topic, unknown_domain)."""
        if not topic.startswith(self._prefix):
            raise reject(
                RejectReason.BAD_TOPIC, f"topic {topic[:128]!r} does not start with {self._prefix!r}"
            )
        parts = topic[len(self._prefix) :].split("/")
        if len(parts) != 3 or parts[2] != TELEMETRY_SUFFIX or not parts[1]:
            raise reject(
                RejectReason.BAD_TOPIC,
                f"topic {topic[:128]!r} is not {self._prefix}<domain>/<device_id>/{TELEMETRY_SUFFIX}",
            )
        domain, device_id = parts[0], parts[1]
        if domain not in self._domains:
            raise reject(RejectReason.UNKNOWN_DOMAIN, f"domain {domain[:64]!r} is not one of the configured")
        if len(device_id) > MAX_DEVICE_ID_LENGTH:
            raise reject(RejectReason.BAD_TOPIC, f"device id is longer than {MAX_DEVICE_ID_LENGTH}")
        return domain, device_id

    def device_of(self, topic: str) -> str | None:
        """The device id of a topic when it has one (for dead letters of rejected payloads)."""
        try:
            return self.parse_topic(topic)[1]
        except RejectedPayload:
            return None

    def parse(self, payload: bytes, topic: str, received_us: int) -> ParseResult:
        """Validate one MQTT message; raise RejectedPayload when the whole payload is rejected."""
        if len(payload) > self._max_bytes:
            raise reject(
                RejectReason.PAYLOAD_TOO_LARGE,
                f"payload of {len(payload)} bytes exceeds the limit of {self._max_bytes}",
            )
        domain, device_id = self.parse_topic(topic)
        doc = _decode(payload)
        readings: list[Reading]
        rejections: list[Rejection]
        if type(doc) is dict:
            _check_device(doc, device_id)
            if "readings" in doc:
                readings, rejections = self._batch(doc["readings"], device_id, received_us)
            elif "metric" in doc or "value" in doc:
                readings, rejections = [self._reading(doc, received_us)], []
            else:
                raise reject(RejectReason.UNKNOWN_SHAPE, "object has neither 'metric' nor 'readings'")
        elif type(doc) is list:
            readings, rejections = resolve_pack(doc, device_id, received_us, self._validator)
        else:
            raise reject(RejectReason.UNKNOWN_SHAPE, f"payload is a JSON {type(doc).__name__}")
        envelope = (
            Envelope(device_id, domain, self._bridge_id, received_us, tuple(readings)) if readings else None
        )
        return ParseResult(domain, device_id, envelope, tuple(rejections))

    def _reading(self, item: dict[str, Any], received_us: int) -> Reading:
        raw_ts = item.get("ts")
        ts_us = None if raw_ts is None else parse_timestamp(raw_ts)
        return self._validator.reading(
            item.get("metric"), item.get("value"), item.get("unit"), ts_us, received_us
        )

    def _batch(self, items: Any, device_id: str, received_us: int) -> tuple[list[Reading], list[Rejection]]:
        if type(items) is not list:
            raise reject(RejectReason.UNKNOWN_SHAPE, "'readings' must be a list")
        if not items:
            raise reject(RejectReason.EMPTY_BATCH, "'readings' is empty")
        readings: list[Reading] = []
        rejections: list[Rejection] = []
        for index, item in enumerate(items):
            try:
                if type(item) is not dict:
                    raise reject(RejectReason.UNKNOWN_SHAPE, "a reading must be an object")
                _check_device(item, device_id)
                readings.append(self._reading(item, received_us))
            except RejectedPayload as exc:
                rejections.append(Rejection(exc.reason.value, f"reading {index}: {exc.message}", index, item))
        return readings, rejections


def _check_device(obj: dict[str, Any], device_id: str) -> None:
    for field in ("device", "device_id"):
        claimed = obj.get(field)
        if claimed is not None and claimed != device_id:
            raise reject(
                RejectReason.DEVICE_MISMATCH,
                f"payload {field} {str(claimed)[:64]!r} differs from the topic's device {device_id!r}",
            )


def _decode(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        strict_error = exc
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise reject(
            RejectReason.NOT_UTF8, f"payload is not UTF-8: {exc.reason} at byte {exc.start}"
        ) from None
    try:
        # Lenient second chance: stdlib json reads NaN, Infinity and 1e400, so a device with one broken
        # reading loses that reading (non_finite_value) rather than the whole batch.
        return json.loads(text)
    except (ValueError, RecursionError):
        raise reject(RejectReason.INVALID_JSON, f"payload is not JSON: {strict_error}") from None
