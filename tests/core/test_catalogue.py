"""The shipped metric catalogue, its extension file and the unit conversions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.catalogue import UnitConversion, load_catalogue
from core.errors import ConfigError
from core.types import DEFAULT_DOMAINS

REQUIRED = {
    "building": {"temperature", "humidity", "co2", "occupancy", "energy_import_kwh"},
    "water": {"water_flow", "water_pressure", "water_volume_m3", "turbidity", "chlorine"},
    "power": {"voltage", "current", "active_power", "frequency", "energy_import_kwh"},
    "environment": {"pm2_5", "pm10", "no2", "noise"},
}


def test_shipped_catalogue_covers_every_domain() -> None:
    catalogue = load_catalogue()
    assert set(REQUIRED) == set(DEFAULT_DOMAINS)
    for domain, metrics in REQUIRED.items():
        for metric in metrics:
            assert domain in catalogue[metric].domains, (domain, metric)


def test_cumulative_meters_are_counters() -> None:
    catalogue = load_catalogue()
    assert {"energy_import_kwh", "energy_export_kwh", "water_volume_m3"} <= catalogue.counters()
    assert "temperature" not in catalogue.counters()
    assert catalogue["water_volume_m3"].unit == "m3"
    assert catalogue["energy_import_kwh"].unit == "kWh"


def test_every_range_is_ordered_and_every_conversion_targets_a_canonical_unit() -> None:
    catalogue = load_catalogue()
    canonical = {spec.unit for spec in catalogue.values()}
    for spec in catalogue.values():
        assert spec.min is None or spec.max is None or spec.min < spec.max, spec
    for (source, target), conversion in catalogue.conversions().items():
        assert target in canonical, conversion
        assert source != target
        assert (conversion.source, conversion.target) == (source, target)


@pytest.mark.parametrize(
    ("source", "target", "value", "expected"),
    [
        ("Wh", "kWh", 1500.0, 1.5),
        ("degF", "Cel", 212.0, 100.0),
        ("degF", "Cel", 32.0, 0.0),
        ("K", "Cel", 273.15, 0.0),
        ("l/s", "m3/h", 1.0, 3.6),
        ("kPa", "bar", 100.0, 1.0),
        ("W", "kW", 2500.0, 2.5),
        ("mg/m3", "ug/m3", 0.02, 20.0),
    ],
)
def test_known_conversions(source: str, target: str, value: float, expected: float) -> None:
    conversion = load_catalogue().conversion(source, target)
    assert conversion is not None
    assert conversion.apply(value) == pytest.approx(expected, abs=1e-9)
    assert not conversion.is_alias


def test_alias_conversion_keeps_the_value() -> None:
    conversion = load_catalogue().conversion("degC", "Cel")
    assert conversion == UnitConversion("degC", "Cel", 1.0, 0.0)
    assert conversion.is_alias
    assert conversion.apply(21.5) == 21.5


def test_unknown_conversion_is_none() -> None:
    assert load_catalogue().conversion("furlong", "Cel") is None


def test_extra_file_adds_and_overrides(tmp_path: Path) -> None:
    extra = tmp_path / "extra.json"
    extra.write_text(
        json.dumps(
            {
                "metrics": {
                    "gas_volume_m3": {"unit": "m3", "kind": "counter", "min": 0, "domains": ["building"]},
                    "temperature": {"unit": "Cel", "kind": "gauge", "min": -80, "max": 60},
                },
                "conversions": [{"from": "ft3", "to": "m3", "scale": 0.0283168}],
            }
        )
    )
    catalogue = load_catalogue(extra)
    assert catalogue["gas_volume_m3"].kind == "counter"
    assert catalogue["gas_volume_m3"].max is None
    assert catalogue["temperature"].min == -80
    assert catalogue.conversion("ft3", "m3") is not None
    assert catalogue.conversion("Wh", "kWh") is not None
    assert "gas_volume_m3" in catalogue.counters()


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {"metrics": []},
        {"metrics": {"x": {"unit": "m", "kind": "rate"}}},
        {"metrics": {"x": {"kind": "gauge"}}},
        {"metrics": {"x": {"unit": "m", "kind": "gauge", "min": 5, "max": 1}}},
        {"metrics": {"x": {"unit": "m", "kind": "gauge", "min": "low"}}},
        {"metrics": {"a/b": {"unit": "m", "kind": "gauge"}}},
        {"metrics": {}, "conversions": {"from": "a"}},
        {"metrics": {}, "conversions": [{"from": "a", "to": "b", "scale": 0}]},
        {"metrics": {}, "conversions": [{"from": "a", "to": "b"}]},
        {"metrics": {}, "conversions": [{"from": 1, "to": "b", "scale": 2}]},
    ],
)
def test_malformed_extra_file_is_a_config_error(tmp_path: Path, doc: object) -> None:
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps(doc))
    with pytest.raises(ConfigError):
        load_catalogue(extra)


def test_unreadable_extra_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_catalogue(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        load_catalogue(bad)
