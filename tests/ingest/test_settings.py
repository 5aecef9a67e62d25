"""Bridge settings: defaults from the issue, CITYINGEST_* variables, validation."""

from __future__ import annotations

import pydantic
import pytest

from core.types import DEFAULT_DOMAINS
from ingest.settings import BridgeSettings


def test_defaults_follow_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "CITYINGEST_MAX_PAYLOAD_BYTES",
        "CITYINGEST_MAX_FUTURE_SKEW_S",
        "CITYINGEST_DOMAINS",
        "CITYINGEST_MAX_IN_FLIGHT_BYTES",
    ):
        monkeypatch.delenv(name, raising=False)
    settings = BridgeSettings()
    assert settings.max_payload_bytes == 256 * 1024
    assert settings.max_in_flight_bytes == 64 * 1024 * 1024
    assert settings.max_future_skew_s == 300
    assert settings.domains == DEFAULT_DOMAINS
    assert settings.readings_topic == "readings"
    assert settings.dlq_topic == "readings.dlq"
    assert settings.kafka_idempotence is True
    assert settings.shared_group is None
    assert settings.ack_stall_s == 30
    # The client id survives restarts (the broker keeps the session under it); the bridge id need not.
    assert settings.client_id == BridgeSettings().client_id


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYINGEST_SHARED_GROUP", "bridges")
    monkeypatch.setenv("CITYINGEST_DOMAINS", "water, power")
    monkeypatch.setenv("CITYINGEST_KAFKA_IDEMPOTENCE", "false")
    monkeypatch.setenv("CITYINGEST_MAX_IN_FLIGHT", "64")
    monkeypatch.setenv("CITYINGEST_MAX_IN_FLIGHT_BYTES", "1000000")
    settings = BridgeSettings()
    assert settings.shared_group == "bridges"
    assert settings.domains == ("water", "power")
    assert settings.kafka_idempotence is False
    assert settings.max_in_flight == 64
    assert settings.max_in_flight_bytes == 1_000_000


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_in_flight", 0),
        ("max_in_flight", 70_000),
        ("max_payload_bytes", 0),
        ("ack_stall_s", 0),
        ("max_in_flight_bytes", 0),
    ],
)
def test_invalid_values_are_refused(field: str, value: int) -> None:
    with pytest.raises(pydantic.ValidationError):
        BridgeSettings.model_validate({field: value})


def test_settings_are_frozen() -> None:
    settings = BridgeSettings()
    with pytest.raises(pydantic.ValidationError):
        settings.max_in_flight = 5  # type: ignore[misc]
