"""The simulated city: devices spread over districts, and values with daily and weekly patterns.

Pure and deterministic: everything random comes from the ``random.Random`` passed in.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from core.catalogue import Catalogue, MetricSpec, UnitConversion
from core.types import Provenance
from simulator.model import SHAPES, Device, Shape, SimReading, TimeFormat
from simulator.settings import SimulatorSettings
from simulator.units import in_unit

Pattern = Literal["diurnal", "office", "rush", "domestic", "flat"]
DOMAIN_ABBREVIATIONS: Final = {"building": "bld", "water": "wat", "power": "pwr", "environment": "env"}
_TIME_FORMATS: Final[tuple[TimeFormat, ...]] = ("rfc3339", "epoch_s", "epoch_ms")


@dataclass(frozen=True, slots=True)
class Profile:
    """How a metric moves: ``base + amplitude * pattern(t)`` plus Gaussian noise (per hour for counters)."""

    base: float
    amplitude: float
    noise: float
    pattern: Pattern
    integer: bool = False


# Keyed by (domain or "*", word the metric name contains); the first match wins.
_PROFILES: Final[tuple[tuple[str, str, Profile], ...]] = (
    ("building", "temp", Profile(21.0, 1.5, 0.2, "office")),
    ("*", "temp", Profile(12.0, 5.0, 0.5, "diurnal")),
    ("*", "humid", Profile(55.0, -10.0, 2.0, "diurnal")),
    ("*", "co2", Profile(420.0, 600.0, 25.0, "office")),
    ("*", "occup", Profile(0.0, 40.0, 2.0, "office", integer=True)),
    ("*", "pm2", Profile(8.0, 12.0, 2.0, "rush")),
    ("*", "pm10", Profile(15.0, 20.0, 3.0, "rush")),
    ("*", "no2", Profile(15.0, 35.0, 4.0, "rush")),
    ("*", "noise", Profile(42.0, 22.0, 3.0, "rush")),
    ("*", "flow", Profile(20.0, 60.0, 3.0, "domestic")),
    ("*", "pressure", Profile(4.6, -0.8, 0.05, "domestic")),
    ("*", "turbid", Profile(0.3, 0.1, 0.05, "flat")),
    ("*", "chlor", Profile(0.5, 0.0, 0.03, "flat")),
    ("*", "volt", Profile(230.0, -3.0, 0.8, "domestic")),
    ("*", "current", Profile(80.0, 120.0, 5.0, "domestic")),
    ("*", "freq", Profile(50.0, 0.0, 0.02, "flat")),
    ("*", "power", Profile(50.0, 100.0, 5.0, "domestic")),
    # Counters: consumption per hour; exported energy comes from rooftop solar.
    ("*", "export", Profile(0.0, 6.0, 0.0, "diurnal")),
    ("building", "energy", Profile(8.0, 20.0, 0.0, "office")),
    ("*", "energy", Profile(200.0, 400.0, 0.0, "domestic")),
    ("*", "volume", Profile(20.0, 60.0, 0.0, "domestic")),
)


def pattern_value(pattern: Pattern, ts_s: float) -> float:
    """The daily/weekly shape of ``pattern`` at a Unix time, between about -1 and 1.6."""
    moment = datetime.fromtimestamp(ts_s, UTC)
    hour = moment.hour + moment.minute / 60
    weekday = moment.weekday() < 5
    if pattern == "diurnal":
        return math.cos(2 * math.pi * (hour - 15) / 24)
    if pattern == "office":
        return (1.0 if 8 <= hour < 18 else 0.1) if weekday else 0.15
    if pattern == "rush":
        if weekday:
            return math.exp(-((hour - 8) ** 2) / 2) + math.exp(-((hour - 17.5) ** 2) / 2)
        return 0.4 * math.exp(-((hour - 13) ** 2) / 8)
    if pattern == "domestic":
        morning = 7.0 if weekday else 9.0
        return 0.1 + math.exp(-((hour - morning) ** 2) / 2) + 0.8 * math.exp(-((hour - 20) ** 2) / 3)
    return 0.0


def _bounds(spec: MetricSpec) -> tuple[float, float]:
    low = spec.min if spec.min is not None else 0.0
    high = spec.max if spec.max is not None else low + 100.0
    return low, high


def profile_for(domain: str, spec: MetricSpec) -> Profile:
    """The profile of a metric; one derived from its range when no known profile fits it."""
    for dom, word, profile in _PROFILES:
        matches = dom in ("*", domain) and word in spec.name.lower()
        if matches and (spec.kind == "counter" or _in_range(spec, profile.base)):
            return profile
    if spec.kind == "counter":
        return Profile(1.0, 1.0, 0.0, "domestic")
    low, high = _bounds(spec)
    width = high - low
    return Profile(low + 0.3 * width, 0.3 * width, 0.02 * width, "diurnal")


def _bounds_or_infinite(spec: MetricSpec) -> tuple[float, float]:
    return (-math.inf if spec.min is None else spec.min, math.inf if spec.max is None else spec.max)


def _in_range(spec: MetricSpec, value: float) -> bool:
    return (spec.min is None or value >= spec.min) and (spec.max is None or value <= spec.max)


def _shape_plan(n: int, settings: SimulatorSettings, rng: random.Random) -> list[Shape]:
    """Shapes for ``n`` devices in the configured ratio (largest remainder), shuffled."""
    weights = (settings.single_share, settings.batch_share, settings.senml_share)
    total = sum(weights)
    exact = [n * w / total for w in weights]
    counts = [int(x) for x in exact]
    for i in sorted(range(3), key=lambda i: counts[i] - exact[i])[: n - sum(counts)]:
        counts[i] += 1
    plan = [shape for shape, k in zip(SHAPES, counts, strict=True) for _ in range(k)]
    rng.shuffle(plan)
    return plan


def domain_metrics(catalogue: Catalogue, domain: str) -> tuple[str, ...]:
    """The catalogue metrics a device of ``domain`` measures, in name order."""
    return tuple(sorted(name for name, spec in catalogue.items() if domain in spec.domains))


def build_city(settings: SimulatorSettings, catalogue: Catalogue, rng: random.Random) -> list[Device]:
    """Lay out the devices: district, provenance, metrics, payload shape and timing of each."""
    # Only domains the bridge is configured to accept: others would all be dead-lettered.
    plans = [(d, n) for d, n in settings.device_counts().items() if n > 0 and d in settings.domains]
    shapes = _shape_plan(sum(n for _, n in plans), settings, rng)
    devices: list[Device] = []
    for domain, n in plans:
        metrics = domain_metrics(catalogue, domain)
        if not metrics:
            continue
        abbr = DOMAIN_ABBREVIATIONS.get(domain, domain[:3])
        for i in range(n):
            district = rng.choice(settings.districts)
            draw = rng.random()
            citizen = domain == "environment" and draw < settings.citizen_share
            if citizen:
                provenance = Provenance.CITIZEN
            elif draw > 1 - settings.partner_share:
                provenance = Provenance.PARTNER
            else:
                provenance = Provenance.OFFICIAL
            chosen = metrics
            if citizen and len(metrics) > 1:
                # Low-cost kits measure only some of what an official station does.
                k = rng.randint(max(1, len(metrics) // 2), len(metrics))
                chosen = tuple(sorted(rng.sample(metrics, k)))
            devices.append(
                Device(
                    device_id=f"{abbr}-{district}-{i + 1:04d}",
                    domain=domain,
                    district=district,
                    provenance=provenance,
                    metrics=chosen,
                    shape=shapes[len(devices)],
                    time_format=rng.choice(_TIME_FORMATS),
                    sends_units=rng.random() < 0.5,
                    report_probability=rng.uniform(0.5, 0.9) if citizen else 1.0,
                    scale=rng.uniform(0.5, 1.5),
                    offset_s=rng.randrange(settings.time_step_s),
                )
            )
    return devices


class ValueModel:
    """Produces each device's readings tick by tick; counter state lives here."""

    def __init__(self, settings: SimulatorSettings, catalogue: Catalogue, devices: Iterable[Device]) -> None:
        self._settings = settings
        self._specs = catalogue
        self._profiles: dict[tuple[str, str], Profile] = {}
        self._counters: dict[tuple[str, str], tuple[int, int]] = {}
        """(device, metric) -> (value in thousandths, ts_us of that value)."""
        self._units: dict[tuple[str, str], UnitConversion] = {}
        for device in devices:
            for metric in device.metrics:
                self._profiles[(device.domain, metric)] = profile_for(device.domain, catalogue[metric])
            for metric, unit in device.units:
                conversion = catalogue.conversion(unit, catalogue[metric].unit)
                if conversion is None:
                    raise ValueError(f"{device.device_id}: no conversion from {unit!r} for {metric!r}")
                self._units[(device.device_id, metric)] = conversion

    def readings(self, device: Device, ts_us: int, rng: random.Random) -> list[SimReading]:
        """The readings ``device`` takes at ``ts_us`` (all its metrics), in the units it reports."""
        out = [self._reading(device, metric, ts_us, rng) for metric in device.metrics]
        if device.units:
            out = [self._in_device_unit(device.device_id, r) for r in out]
        return out

    def _in_device_unit(self, device_id: str, reading: SimReading) -> SimReading:
        conversion = self._units.get((device_id, reading.metric))
        if conversion is None:
            return reading
        low, high = _bounds_or_infinite(self._specs[reading.metric])
        return in_unit(reading, conversion, low, high)

    def _reading(self, device: Device, metric: str, ts_us: int, rng: random.Random) -> SimReading:
        spec = self._specs[metric]
        profile = self._profiles[(device.domain, metric)]
        level = profile.base + profile.amplitude * pattern_value(profile.pattern, ts_us / 1e6)
        if spec.kind == "counter":
            return self._count(device, metric, ts_us, level, rng)
        value = level + (device.scale - 1) * profile.amplitude * 0.3 + rng.gauss(0.0, profile.noise)
        if spec.min is not None:
            value = max(value, spec.min)
        if spec.max is not None:
            value = min(value, spec.max)
        out_of_range = False
        if rng.random() < self._settings.out_of_range_rate and (spec.min, spec.max) != (None, None):
            low, high = _bounds(spec)
            out_of_range = True
            value = high + (high - low) * 0.5 + 1 if spec.max is not None else low - 1 - abs(low)
        milli = round(value) * 1000 if profile.integer and not out_of_range else round(value * 100) * 10
        return SimReading(metric, ts_us, milli, out_of_range=out_of_range)

    def _count(
        self, device: Device, metric: str, ts_us: int, per_hour: float, rng: random.Random
    ) -> SimReading:
        key = (device.device_id, metric)
        state = self._counters.get(key)
        if state is None:
            # Meters are installed long before the simulation starts.
            state = (rng.randrange(100_000_000), ts_us - self._settings.time_step_s * 1_000_000)
        value, last_us = state
        hours = (ts_us - last_us) / 3.6e9
        increment = max(0, round(max(per_hour, 0.0) * device.scale * hours * 1000))
        reset = rng.random() < self._settings.reset_rate
        # After a reset the meter starts again from zero and has counted this interval only.
        value = increment if reset else value + increment
        self._counters[key] = (value, ts_us)
        return SimReading(metric, ts_us, value, counter=True, reset=reset)
