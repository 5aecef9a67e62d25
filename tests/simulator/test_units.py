"""Devices reporting in non-canonical units: chosen by seed, fixed per meter, written in every shape."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import orjson

from core.catalogue import UnitConversion, load_catalogue
from simulator.generate import Simulation
from simulator.model import Message, SimReading
from simulator.units import alternative_units, in_unit
from tests.simulator.conftest import small_city

CATALOGUE = load_catalogue()


def _sim(**overrides: Any) -> Simulation:
    return Simulation(small_city(**overrides))


def test_no_device_changes_units_at_share_zero() -> None:
    sim = _sim(non_canonical_unit_share=0, count=1000)
    assert all(d.units == () for d in sim.devices)
    assert not any(r.unit for m in sim.messages() for r in m.readings)


def test_the_share_leaves_the_city_layout_alone() -> None:
    without = _sim(non_canonical_unit_share=0).devices
    every = _sim(non_canonical_unit_share=1).devices
    assert [replace(d, units=()) for d in every] == list(without)
    assert all(d.units for d in every)


def test_every_catalogue_conversion_is_used_in_a_large_city() -> None:
    sim = _sim(devices=400, non_canonical_unit_share=1)
    used = {(metric, unit) for d in sim.devices for metric, unit in d.units}
    every = {(m, c.source) for m in CATALOGUE for c in alternative_units(CATALOGUE, m)}
    assert used == every


def test_a_device_keeps_its_unit_for_a_metric() -> None:
    sim = _sim(non_canonical_unit_share=0.5, count=4000)
    by_id = {d.device_id: d for d in sim.devices}
    counters = 0
    for message in sim.messages():
        for reading in message.readings:
            unit = by_id[message.device_id].unit_of(reading.metric)
            # A gauge falls back to the canonical unit where the conversion would cross a bound.
            assert reading.unit in ((unit,) if reading.counter else (unit, None))
            counters += reading.counter and reading.unit is not None
    assert counters > 0


def _units_in_payload(message: Message) -> list[tuple[Any, Any]]:
    doc = orjson.loads(message.payload)
    if message.shape == "single":
        return [(doc.get("unit"), doc["value"])]
    if message.shape == "batch":
        return [(item.get("unit"), item["value"]) for item in doc["readings"]]
    return [(rec.get("u"), rec.get("v", rec.get("s"))) for rec in doc[1:]]


def test_units_are_written_in_every_shape() -> None:
    shapes: set[str] = set()
    for message in _sim(non_canonical_unit_share=0.5, count=3000).messages():
        if message.malformed is not None:
            continue
        written = _units_in_payload(message)
        for reading, (unit, value) in zip(message.readings, written, strict=True):
            if reading.unit is not None:
                assert (unit, value) == (reading.unit, reading.sent)
                assert message.shape is not None
                shapes.add(message.shape)
            else:
                assert unit in (None, CATALOGUE[reading.metric].unit)
                assert value == reading.value
    assert shapes == {"single", "batch", "senml"}


def test_converted_values_land_on_the_canonical_value() -> None:
    converted = 0
    for message in _sim(devices=200, non_canonical_unit_share=1, count=4000).messages():
        for reading in message.readings:
            if reading.converted is not None:
                converted += 1
                assert math.isclose(reading.converted, reading.value, rel_tol=1e-12, abs_tol=1e-12)
    assert converted > 1000


def test_fahrenheit_is_written_with_few_digits() -> None:
    fahrenheit = UnitConversion("degF", "Cel", 0.5555555555555556, -17.77777777777778)
    reading = in_unit(SimReading("temperature", 0, 21_500), fahrenheit, -50, 80)
    assert reading.sent == 70.7
    assert reading.converted == fahrenheit.apply(70.7)
    assert reading.unit_converted


def test_a_spelling_alias_is_not_converted() -> None:
    reading = in_unit(SimReading("temperature", 0, 21_500), UnitConversion("degC", "Cel", 1), -50, 80)
    assert (reading.unit, reading.sent, reading.converted) == ("degC", 21.5, None)
    assert reading.stored_value == 21.5
    assert not reading.unit_converted


def test_a_value_on_a_bound_stays_canonical_if_conversion_would_cross_it() -> None:
    # 3 dm * 0.1 is 0.30000000000000004 m: past a 0.3 maximum, the bridge would flag it out of range.
    decimetres = UnitConversion("dm", "m", 0.1)
    on_bound = SimReading("depth", 0, 300)
    assert in_unit(on_bound, decimetres, 0.0, 0.3) == on_bound
    assert in_unit(on_bound, decimetres, 0.0, 1.0).unit == "dm"


def test_truth_counts_converted_readings_and_names_device_units() -> None:
    sim = _sim(non_canonical_unit_share=0.5, count=3000)
    truth = sim.new_truth()
    messages = list(sim.messages())
    for message in messages:
        truth.record(message)
    doc = truth.to_dict()
    distinct = {
        (m.device_id, r.metric, r.ts_us): r.unit_converted
        for m in messages
        if m.malformed is None
        for r in m.readings
    }
    assert doc["readings"]["unit_converted"] == sum(distinct.values()) > 0
    assert sum(t["unit_converted"] for t in doc["metrics"].values()) == sum(distinct.values())
    series_total = sum(s["unit_converted"] for per in doc["series"].values() for s in per.values())
    assert series_total == sum(distinct.values())
    for device in sim.devices:
        assert doc["devices"][device.device_id]["units"] == dict(device.units)
