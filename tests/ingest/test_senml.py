"""SenML (RFC 8428) packs resolved the way the RFC says: base fields, relative times, sums."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import orjson
import pytest

from core.catalogue import load_catalogue
from core.errors import RejectedPayload
from core.readings import Reading, to_us
from core.types import ReadingFlag
from ingest.parse import PayloadParser
from ingest.senml import metric_of

NOW_US = to_us(datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC))
T0 = 1_795_000_000  # an absolute time (seconds) a little before NOW
F = ReadingFlag


@pytest.fixture(scope="module")
def parser() -> PayloadParser:
    return PayloadParser(load_catalogue(), bridge_id="b")


def resolve(parser: PayloadParser, pack: object, device: str = "m-1", domain: str = "power") -> list[Reading]:
    result = parser.parse(orjson.dumps(pack), f"city/{domain}/{device}/telemetry", NOW_US)
    assert result.rejections == (), result.rejections
    assert result.envelope is not None
    return list(result.envelope.readings)


def test_base_name_time_and_unit_apply_to_following_records(parser: PayloadParser) -> None:
    pack = [
        {"bn": "urn:dev:m-1:", "bt": T0, "bu": "V", "bver": 10, "n": "voltage", "v": 230.1},
        {"n": "voltage", "t": 10, "v": 229.8},
        {"n": "current", "u": "A", "t": 10, "v": 12},
        {"n": "frequency", "u": "Hz", "v": 50.01, "ut": 60},
    ]
    assert resolve(parser, pack) == [
        Reading("voltage", T0 * 1_000_000, 230.1, 0),
        Reading("voltage", (T0 + 10) * 1_000_000, 229.8, 0),
        Reading("current", (T0 + 10) * 1_000_000, 12.0, 0),
        Reading("frequency", T0 * 1_000_000, 50.01, 0),
    ]


def test_relative_times_are_relative_to_the_receive_time(parser: PayloadParser) -> None:
    pack = [{"n": "voltage", "v": 230, "t": -60}, {"bt": -10, "n": "voltage", "v": 231, "t": 5}]
    got = resolve(parser, pack)
    assert [r.ts_us for r in got] == [NOW_US - 60_000_000, NOW_US - 5_000_000]
    assert [r.flags for r in got] == [0, 0]


def test_record_without_any_time_is_flagged(parser: PayloadParser) -> None:
    (reading,) = resolve(parser, [{"n": "voltage", "v": 230}])
    assert reading.ts_us == NOW_US
    assert reading.flags == F.NO_TIMESTAMP


def test_absolute_and_fractional_times(parser: PayloadParser) -> None:
    (reading,) = resolve(parser, [{"n": "voltage", "v": 230, "t": T0 + 0.25}])
    assert reading.ts_us == T0 * 1_000_000 + 250_000


def test_sum_is_a_counter_value_with_base_sum(parser: PayloadParser) -> None:
    pack = [
        {"bn": "m-1/", "bt": T0, "bs": 1000, "n": "energy_import_kwh", "s": 5.5},
        {"n": "energy_import_kwh", "s": 6.5, "t": 900, "u": "kWh"},
        {"n": "energy_export_kwh", "s": 2000, "bs": 0, "u": "Wh", "t": 900},
    ]
    got = resolve(parser, pack)
    assert [(r.metric, r.value, r.flags) for r in got] == [
        ("energy_import_kwh", 1005.5, 0),
        ("energy_import_kwh", 1006.5, 0),
        ("energy_export_kwh", 2.0, F.UNIT_CONVERTED),
    ]


def test_counter_reported_as_value_is_accepted(parser: PayloadParser) -> None:
    (reading,) = resolve(parser, [{"n": "energy_import_kwh", "v": 42.0, "t": T0}])
    assert (reading.metric, reading.value) == ("energy_import_kwh", 42.0)


def test_counter_with_value_and_sum_takes_the_sum(parser: PayloadParser) -> None:
    (reading,) = resolve(parser, [{"n": "energy_import_kwh", "v": 0.4, "s": 42.0, "t": T0}])
    assert reading.value == 42.0


def test_gauge_with_value_and_sum_takes_the_value(parser: PayloadParser) -> None:
    (reading,) = resolve(parser, [{"n": "voltage", "v": 230.0, "s": 99.0, "t": T0}])
    assert reading.value == 230.0


def test_base_value_is_added(parser: PayloadParser) -> None:
    got = resolve(
        parser, [{"bv": 230, "n": "voltage", "v": 0.5, "t": T0}, {"n": "voltage", "v": -1, "t": T0}]
    )
    assert [r.value for r in got] == [230.5, 229.0]


def test_base_only_record_produces_nothing(parser: PayloadParser) -> None:
    got = resolve(parser, [{"bn": "urn:dev:m-1:", "bt": T0}, {"n": "voltage", "v": 230}])
    assert got == [Reading("voltage", T0 * 1_000_000, 230.0, 0)]


def test_device_id_containing_a_colon(parser: PayloadParser) -> None:
    pack = [{"bn": "urn:dev:mac:00:1a:2b:", "n": "voltage", "v": 230, "t": T0}]
    assert resolve(parser, pack, device="00:1a:2b")[0].metric == "voltage"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("voltage", "voltage"),
        ("m-1/voltage", "voltage"),
        ("m-1:voltage", "voltage"),
        ("urn:dev:m-1:voltage", "voltage"),
        ("site/a/m-1/voltage", "voltage"),
    ],
)
def test_metric_of_accepts_own_device_prefix(name: str, expected: str) -> None:
    assert metric_of(name, "m-1") == expected


@pytest.mark.parametrize(
    "name", ["m-2/voltage", "urn:dev:xm-1:voltage", "m-1x/voltage", "urn:dev:m-1:x:voltage"]
)
def test_metric_of_rejects_other_devices(name: str) -> None:
    with pytest.raises(RejectedPayload) as info:
        metric_of(name, "m-1")
    assert info.value.reason == "device_mismatch"


def test_pack_level_version_rejection_beats_record_results(parser: PayloadParser) -> None:
    pack = [{"n": "voltage", "v": 230}, {"bver": 12, "n": "voltage", "v": 231}]
    with pytest.raises(RejectedPayload) as info:
        parser.parse(orjson.dumps(pack), "city/power/m-1/telemetry", NOW_US)
    assert info.value.reason == "senml_unsupported_version"


@pytest.mark.parametrize(
    "pack",
    [
        [{"bt": -1e15, "n": "water_flow", "v": 1}],  # relative, ~3e7 years before the receive time
        [{"bt": 1e303, "n": "water_flow", "v": 1}],  # absolute, microseconds overflow a float
        [{"bt": 1.7e308, "t": 1.7e308, "n": "water_flow", "v": 1}],  # bt + t is not finite
        [{"bt": -1.7e308, "n": "water_flow", "v": 1}],
        [{"bt": 1e12, "n": "water_flow", "v": 1}],  # year 33658
        [{"n": "water_flow", "v": 1, "t": -1.8e9}],  # relative, before 1970
        [{"n": "water_flow", "v": 1, "t": 10**400}],  # an integer beyond float range
    ],
)
def test_times_outside_the_range_are_bad_timestamps(parser: PayloadParser, pack: list[object]) -> None:
    payload = json.dumps(pack).encode()  # orjson refuses integers beyond 64 bits, devices need not
    result = parser.parse(payload, "city/water/m-1/telemetry", NOW_US)
    assert result.envelope is None
    assert [r.reason for r in result.rejections] == ["bad_timestamp"]
