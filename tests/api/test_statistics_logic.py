"""The pure statistics rules: months, completeness, suppression and cell shaping."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.decimals import DECIMALS, DEFAULT_DECIMALS, decimals_of, rounded
from api.statistics import (
    TOTAL,
    completeness,
    missing_metrics,
    month_range,
    next_month,
    obs_status,
    parse_month,
    shape_cell,
)
from core.catalogue import MetricSpec, load_catalogue

GAUGE = MetricSpec("temperature", "Cel", "gauge", -50, 80, ("building", "environment"))
COUNTER = MetricSpec("water_volume_m3", "m3", "counter", 0, None, ("water",))
JAN = datetime(2024, 1, 1, tzinfo=UTC)
FEB = datetime(2024, 2, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"), [("2024-01", date(2024, 1, 1)), ("1999-12", date(1999, 12, 1))]
)
def test_parse_month(text: str, expected: date) -> None:
    assert parse_month(text) == expected


@pytest.mark.parametrize("text", ["2024-13", "2024-00", "2024-1", "24-01", "2024-01-01", "1969-12", ""])
def test_parse_month_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"month|before 1970"):
        parse_month(text)


def test_month_range_crosses_years_and_has_real_month_lengths() -> None:
    months = month_range(date(2023, 11, 1), date(2024, 3, 1), 12)
    assert [m[0].strftime("%Y-%m") for m in months] == ["2023-11", "2023-12", "2024-01", "2024-02", "2024-03"]
    assert [(e - s).days for s, e in months] == [30, 31, 31, 29, 31]
    assert all(s.tzinfo is UTC for s, _ in months)


def test_month_range_refuses_reversed_and_too_long() -> None:
    with pytest.raises(ValueError, match="before start"):
        month_range(date(2024, 2, 1), date(2024, 1, 1), 12)
    with pytest.raises(ValueError, match="more than 12 months"):
        month_range(date(2024, 1, 1), date(2025, 1, 1), 12)
    assert len(month_range(date(2024, 1, 1), date(2024, 12, 1), 12)) == 12


@given(st.integers(1970, 2500), st.integers(1, 12))
def test_next_month_is_the_first_of_the_following_month(year: int, month: int) -> None:
    following = next_month(date(year, month, 1))
    assert following.day == 1
    assert (following - timedelta(days=1)).month == month


def test_completeness() -> None:
    assert completeness(0, 0.0) is None
    assert completeness(372, 744.0) == 0.5
    assert completeness(800, 744.0) == pytest.approx(800 / 744)


@pytest.mark.parametrize(
    ("devices", "k", "status"), [(0, 3, "O"), (1, 3, "Q"), (2, 3, "Q"), (3, 3, "A"), (1, 1, "A")]
)
def test_obs_status(devices: int, k: int, status: str) -> None:
    assert obs_status(devices, k) == status


def _row(**over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "period": JAN,
        "district": "north",
        "domain": "water",
        "provenance": "official",
        "devices_reporting": 3,
        "readings": 40,
        "total": 100.0,
        "min": 1.0,
        "max": 9.0,
        "flagged": 2,
        "increase": 55.5,
        "devices_without_interval": 1,
        "devices_expected": 2,
        "expected": 80.0,
        "received": 20,
    }
    row.update(over)
    return row


def test_shape_cell_published_gauge() -> None:
    cell = shape_cell(_row(), GAUGE, ["district"], 3)
    assert (cell.period, cell.district, cell.domain, cell.provenance) == ("2024-01", "north", TOTAL, TOTAL)
    assert (cell.mean, cell.min, cell.max) == (2.5, 1.0, 9.0)
    assert cell.total_consumption is None  # gauges have no consumption
    assert (cell.completeness, cell.readings_expected, cell.readings_received) == (0.25, 80.0, 20)
    assert (cell.obs_status, cell.suppressed, cell.flagged) == ("A", False, 2)


def test_shape_cell_counter_total() -> None:
    cell = shape_cell(_row(), COUNTER, ["district", "domain", "provenance"], 3)
    assert cell.total_consumption == 55.5
    assert (cell.domain, cell.provenance) == ("water", "official")


def test_shape_cell_suppressed_drops_values_and_the_counts_that_rebuild_them() -> None:
    cell = shape_cell(_row(devices_reporting=2), COUNTER, ["district"], 3)
    assert cell.suppressed
    assert cell.obs_status == "Q"
    assert (cell.mean, cell.min, cell.max, cell.total_consumption) == (None, None, None, None)
    # readings (with a published total and the partners' counts) rebuilds the mean; completeness x
    # readings_expected rebuilds readings_received, which is readings for devices with an interval.
    assert (cell.readings, cell.flagged, cell.readings_received, cell.completeness) == (None,) * 4
    assert (cell.devices_reporting, cell.devices_expected) == (2, int(_row()["devices_expected"]))


def test_shape_cell_without_data() -> None:
    row = _row(devices_reporting=0, readings=0, total=None, min=None, max=None, increase=None, received=0)
    cell = shape_cell(row, GAUGE, [], 3)
    assert cell.obs_status == "O"
    assert not cell.suppressed
    assert cell.completeness == 0.0
    assert cell.district == TOTAL


def test_shape_cell_unknown_district_is_null_not_total() -> None:
    assert shape_cell(_row(district=None), GAUGE, ["district"], 1).district is None


def test_missing_metrics_by_domain() -> None:
    specs = list(load_catalogue().values())
    water = {s.name for s in specs if "water" in s.domains}
    assert set(missing_metrics(["water"], [], specs)) == water
    assert "water_flow" not in missing_metrics(["water"], ["water_flow"], specs)
    assert missing_metrics([], [], specs) == []


def test_decimals_cover_the_catalogue_and_round_the_noise() -> None:
    assert {spec.unit for spec in load_catalogue().values()} <= set(DECIMALS)
    assert rounded(104.99999999999977, decimals_of("kWh")) == 105.0
    assert rounded(None, 2) is None
    assert decimals_of("furlongs") == DEFAULT_DECIMALS
    # A counter's consumption is rounded in the cell; the count of readings is not a value.
    cell = shape_cell(_row(increase=104.99999999999977), COUNTER, [], 3)
    assert cell.total_consumption == 105.0


def test_docs_state_the_decimals_of_the_code() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text(encoding="utf-8")
    stated: dict[str, int] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[1].isdigit():
            for unit, places in ((cells[0], cells[1]), (cells[3], cells[4])):
                if unit.startswith("`"):
                    stated[unit.strip("`")] = int(places)
                elif unit == "any other unit":
                    assert int(places) == DEFAULT_DECIMALS
    assert stated == dict(DECIMALS)
