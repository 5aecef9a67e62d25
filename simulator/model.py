"""The simulator's vocabulary: devices, the readings they take and the messages they send."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.types import Provenance

Shape = Literal["single", "batch", "senml"]
SHAPES: tuple[Shape, ...] = ("single", "batch", "senml")
TimeFormat = Literal["rfc3339", "epoch_s", "epoch_ms"]


@dataclass(frozen=True, slots=True)
class Device:
    """One simulated device: where it is, who runs it, what it measures and how it talks."""

    device_id: str
    domain: str
    district: str
    provenance: Provenance
    metrics: tuple[str, ...]
    shape: Shape
    time_format: TimeFormat
    sends_units: bool
    report_probability: float
    """Chance of reporting at each tick; below 1 for citizen devices, which skip readings."""
    scale: float
    """Size of the site relative to a typical one (multiplies amplitudes and consumption)."""
    offset_s: int
    """Fixed delay of the device's readings after each tick starts, so devices do not all align."""
    units: tuple[tuple[str, str], ...] = ()
    """``(metric, unit)`` for the metrics this device reports in an accepted non-canonical unit."""

    def unit_of(self, metric: str) -> str | None:
        """The non-canonical unit the device reports ``metric`` in, or None for the canonical one."""
        return next((unit for name, unit in self.units if name == metric), None)


@dataclass(frozen=True, slots=True)
class SimReading:
    """One generated reading; values are integer thousandths of the canonical unit, so sums in the
    truth are exact."""

    metric: str
    ts_us: int
    value_milli: int
    counter: bool = False
    out_of_range: bool = False
    reset: bool = False
    unit: str | None = None
    """The accepted non-canonical unit the device writes this reading in; None for the canonical unit."""
    sent: float | None = None
    """The value as written in ``unit`` (None when ``unit`` is None)."""
    converted: float | None = None
    """The bridge's conversion of ``sent``, which it flags ``UNIT_CONVERTED``; None when it converts
    nothing (canonical unit, or a mere spelling of it such as ``degC``)."""

    @property
    def value(self) -> float:
        """The canonical value; the store holds it (within float rounding when converted)."""
        return self.value_milli / 1000

    @property
    def payload_value(self) -> float:
        """The value as written in the payload, in ``unit`` when there is one."""
        return self.value_milli / 1000 if self.sent is None else self.sent

    @property
    def stored_value(self) -> float:
        """Exactly the float the bridge forwards for this reading."""
        return self.payload_value if self.converted is None else self.converted

    @property
    def unit_converted(self) -> bool:
        """Whether the bridge flags the reading ``UNIT_CONVERTED``."""
        return self.converted is not None


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT message as the simulator publishes it, with what it carries for the truth."""

    seq: int
    """Position in the generated sequence (0, 1, 2, ...)."""
    topic: str
    payload: bytes
    device_id: str
    sim_time_us: int
    """Simulated time at which the device sends it; never earlier than any reading it carries."""
    shape: Shape | None = None
    readings: tuple[SimReading, ...] = ()
    duplicate_of: int | None = None
    """``seq`` of the message this one re-sends byte for byte."""
    malformed: str | None = None
    """The reject reason the bridge should dead-letter this payload with (``RejectReason`` value)."""
    late: bool = False
    reordered: bool = False
