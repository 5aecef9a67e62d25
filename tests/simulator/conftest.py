"""Shared settings for the simulator tests: a small city with every fault turned up."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from simulator.settings import SimulatorSettings

START = datetime(2026, 11, 2, 0, 0, 0, tzinfo=UTC)


def seeded(seed: int | str) -> random.Random:
    """A deterministic random generator for test data."""
    return random.Random(seed)  # noqa: S311 - test data, not crypto


def small_city(**overrides: Any) -> SimulatorSettings:
    """A seeded city of 24 devices starting at :data:`START`, with frequent faults."""
    values: dict[str, Any] = {
        "seed": 7,
        "buildings": 6,
        "water_points": 4,
        "power_assets": 4,
        "environment_sensors": 10,
        "start": START,
        "count": 3000,
        "batch_size": 4,
        "duplicate_rate": 0.05,
        "late_rate": 0.03,
        "out_of_order_rate": 0.05,
        "malformed_rate": 0.05,
        "out_of_range_rate": 0.01,
        "reset_rate": 0.02,
        "citizen_share": 0.5,
        "partner_share": 0.2,
    }
    values.update(overrides)
    return SimulatorSettings.model_validate(values)


@pytest.fixture
def settings() -> SimulatorSettings:
    """The default small city."""
    return small_city()
