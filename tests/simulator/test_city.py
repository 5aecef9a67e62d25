"""The city model: devices over districts, provenance, patterns and plausible values."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta
from statistics import mean

import pytest

from core.catalogue import load_catalogue
from core.readings import to_us
from core.types import Provenance
from simulator.city import Pattern, ValueModel, build_city, domain_metrics, pattern_value
from simulator.generate import Simulation
from simulator.model import Device
from tests.simulator.conftest import seeded, small_city

CATALOGUE = load_catalogue()


def _city(**overrides: object) -> list[Device]:
    return build_city(small_city(**overrides), CATALOGUE, seeded(1))


def test_device_counts_per_domain() -> None:
    domains = Counter(d.domain for d in _city())
    assert domains == {"building": 6, "water": 4, "power": 4, "environment": 10}


def test_device_ids_are_unique_and_name_their_district() -> None:
    devices = _city(devices=200)
    assert len({d.device_id for d in devices}) == 200
    for device in devices:
        assert device.district in device.device_id
    assert {d.district for d in devices} == set(small_city().districts)


def test_devices_measure_their_domains_metrics() -> None:
    for device in _city():
        assert device.metrics
        assert set(device.metrics) <= set(domain_metrics(CATALOGUE, device.domain))
        for metric in device.metrics:
            assert device.domain in CATALOGUE[metric].domains


def test_citizens_run_environment_sensors_and_skip_readings() -> None:
    devices = _city(devices=400, citizen_share=0.5)
    citizens = [d for d in devices if d.provenance == Provenance.CITIZEN]
    assert citizens
    assert all(d.domain == "environment" and d.report_probability < 1 for d in citizens)
    assert all(d.report_probability == 1 for d in devices if d.provenance != Provenance.CITIZEN)


def test_citizen_devices_report_less_often() -> None:
    settings = small_city(count=20000, duplicate_rate=0, malformed_rate=0)
    sim = Simulation(settings)
    per_device: Counter[str] = Counter()
    for message in sim.messages():
        per_device[message.device_id] += len(message.readings)
    rate = {
        kind: mean(
            per_device[d.device_id] / len(d.metrics)
            for d in sim.devices
            if d.domain == "environment" and (d.provenance == Provenance.CITIZEN) == kind
        )
        for kind in (True, False)
    }
    assert rate[True] < rate[False]


def test_shapes_follow_the_mix() -> None:
    devices = _city(devices=100, single_share=1, batch_share=1, senml_share=2)
    assert Counter(d.shape for d in devices) == {"single": 25, "batch": 25, "senml": 50}


@pytest.mark.parametrize("pattern", ["office", "rush", "domestic"])
def test_weekday_daytime_is_busier_than_night(pattern: Pattern) -> None:
    wednesday_9 = datetime(2026, 11, 18, 9, 0, tzinfo=UTC).timestamp()
    wednesday_3 = datetime(2026, 11, 18, 3, 0, tzinfo=UTC).timestamp()
    assert pattern_value(pattern, wednesday_9) > pattern_value(pattern, wednesday_3)


def test_offices_are_quiet_at_the_weekend() -> None:
    wednesday = datetime(2026, 11, 18, 11, 0, tzinfo=UTC).timestamp()
    sunday = datetime(2026, 11, 22, 11, 0, tzinfo=UTC).timestamp()
    assert pattern_value("office", wednesday) > pattern_value("office", sunday)


def test_values_stay_in_range_unless_flagged() -> None:
    settings = small_city(out_of_range_rate=0.05)
    devices = build_city(settings, CATALOGUE, seeded(2))
    model = ValueModel(settings, CATALOGUE, devices)
    rng = seeded(3)
    flagged = 0
    start = to_us(datetime(2026, 11, 16, tzinfo=UTC))
    for tick in range(7 * 24):
        for device in devices:
            for reading in model.readings(device, start + tick * 3_600_000_000, rng):
                spec = CATALOGUE[reading.metric]
                in_range = (spec.min is None or reading.value >= spec.min) and (
                    spec.max is None or reading.value <= spec.max
                )
                assert in_range != reading.out_of_range
                flagged += reading.out_of_range
    assert flagged > 0


def test_building_co2_follows_office_hours() -> None:
    settings = small_city(out_of_range_rate=0)
    devices = [d for d in build_city(settings, CATALOGUE, seeded(2)) if "co2" in d.metrics]
    model = ValueModel(settings, CATALOGUE, devices)
    rng = seeded(4)

    def co2_at(hour: int) -> float:
        ts = to_us(datetime(2026, 11, 18, hour, tzinfo=UTC))
        return mean(r.value for d in devices for r in model.readings(d, ts, rng) if r.metric == "co2")

    assert co2_at(11) > co2_at(2) + 100


def test_only_configured_domains_get_devices() -> None:
    devices = _city(domains="water,power")
    assert {d.domain for d in devices} == {"water", "power"}


def test_citizen_devices_report_at_irregular_intervals() -> None:
    settings = small_city(count=6000, duplicate_rate=0, malformed_rate=0, late_rate=0, out_of_order_rate=0)
    sim = Simulation(settings)
    times: dict[str, list[int]] = {}
    for message in sim.messages():
        for reading in message.readings:
            times.setdefault(f"{message.device_id}/{reading.metric}", []).append(reading.ts_us)
    step_us = settings.time_step_s * 1_000_000
    gaps: dict[bool, set[int]] = {True: set(), False: set()}
    for device in sim.devices:
        citizen = device.provenance == Provenance.CITIZEN
        for metric in device.metrics:
            series = sorted(times.get(f"{device.device_id}/{metric}", []))
            gaps[citizen].update(b - a for a, b in itertools.pairwise(series))
    # Official devices report every tick; citizens' kits skip some, so their gaps vary.
    assert gaps[False] == {step_us}
    assert len(gaps[True]) > 3
    assert min(gaps[True]) == step_us


def test_consumption_follows_the_week() -> None:
    settings = small_city(out_of_range_rate=0, reset_rate=0)
    devices = [d for d in build_city(settings, CATALOGUE, seeded(2)) if d.domain == "building"]
    model = ValueModel(settings, CATALOGUE, devices)
    rng = seeded(5)

    def used_in_an_hour(start: datetime) -> int:
        # Counters: the hour's increase of every building's imported energy, after a first reading.
        first, last = (to_us(start + timedelta(hours=h)) for h in (0, 1))
        total = 0
        for device in devices:
            before = {r.metric: r.value_milli for r in model.readings(device, first, rng)}
            after = {r.metric: r.value_milli for r in model.readings(device, last, rng)}
            total += after["energy_import_kwh"] - before["energy_import_kwh"]
        return total

    wednesday = used_in_an_hour(datetime(2026, 11, 18, 10, tzinfo=UTC))
    sunday = used_in_an_hour(datetime(2026, 11, 22, 10, tzinfo=UTC))
    assert wednesday > 2 * sunday > 0
