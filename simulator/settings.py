"""Settings of ``cityingest simulate``: the city to simulate, how fast, and which faults to inject."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from core.settings import MqttSettings, split_csv
from core.types import RejectReason
from simulator.malformed import MALFORMED_REASONS

DEFAULT_DISTRICTS: Final[tuple[str, ...]] = (
    "north",
    "south",
    "harbour",
    "old-town",
    "university",
    "riverside",
    "industrial",
    "airport",
)
# District names go into device ids, hence into MQTT topics and SenML names.
_DISTRICT_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}\Z")


class SimulatorSettings(MqttSettings):
    """What the device simulator publishes; the same seed and settings give the same messages."""

    seed: int | None = Field(
        None,
        description="Random seed; the same seed, --start and settings give byte-identical payloads (the "
        "truth file records the start; without --start it follows the wall clock).",
    )
    devices: int | None = Field(
        None,
        ge=0,
        description="Total number of devices, split over the domains (overrides the per-domain counts).",
    )
    buildings: int = Field(20, ge=0, description="Number of building devices.")
    water_points: int = Field(10, ge=0, description="Number of water network measuring points.")
    power_assets: int = Field(10, ge=0, description="Number of power grid assets.")
    environment_sensors: int = Field(20, ge=0, description="Number of environment (air, noise) sensors.")
    districts: Annotated[tuple[str, ...], NoDecode] = Field(
        DEFAULT_DISTRICTS, description="Comma-separated district names the devices are spread over."
    )
    citizen_share: float = Field(
        0.3, ge=0, le=1, description="Share of environment sensors operated by citizens (irregular)."
    )
    partner_share: float = Field(0.1, ge=0, le=1, description="Share of devices operated by partners.")
    rate: float = Field(100.0, ge=0, description="Messages per second to publish; 0 = as fast as possible.")
    duration_s: float | None = Field(
        None, gt=0, description="Stop after this many wall-clock seconds (default: no time limit)."
    )
    count: int | None = Field(
        None, ge=0, description="Stop after this many messages, faults included (default: no limit)."
    )
    single_share: float = Field(0.5, ge=0, description="Relative share of devices sending single readings.")
    batch_share: float = Field(0.3, ge=0, description="Relative share of devices sending reading batches.")
    senml_share: float = Field(0.2, ge=0, description="Relative share of devices sending SenML packs.")
    batch_size: int = Field(
        10, ge=1, le=1000, description="Readings per batch or SenML pack a batching device sends."
    )
    duplicate_rate: float = Field(
        0.01, ge=0, le=1, description="Probability that a message is followed by a re-send of a recent one."
    )
    late_rate: float = Field(
        0.01, ge=0, le=1, description="Probability that a message is held back for several time steps."
    )
    out_of_order_rate: float = Field(
        0.02, ge=0, le=1, description="Probability that a message is swapped with a few following ones."
    )
    malformed_rate: float = Field(
        0.01, ge=0, le=1, description="Probability that a malformed payload is sent after a message."
    )
    malformed_reasons: Annotated[tuple[RejectReason, ...], NoDecode] = Field(
        MALFORMED_REASONS,
        description="Comma-separated reject reasons the malformed payloads are drawn from, evenly.",
    )
    max_payload_bytes: int = Field(
        262_144,
        ge=1,
        description="The bridge's payload size limit (the same variable): payload_too_large payloads "
        "are built just over it.",
    )
    non_canonical_unit_share: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Share of devices reporting some metrics in another unit the bridge converts "
        "(Wh, degF, L/s, ...).",
    )
    out_of_range_rate: float = Field(
        0.002, ge=0, le=1, description="Probability that a gauge reading is outside its plausible range."
    )
    reset_rate: float = Field(
        0.002, ge=0, le=1, description="Probability that a counter reading follows a meter reset."
    )
    start: datetime | None = Field(
        None,
        description="Simulated time of the first reading (RFC 3339); default: far enough in the past "
        "that the run ends around now (or now with --live).",
    )
    time_step_s: int = Field(
        60, ge=1, description="Simulated seconds between two readings of a device (one tick)."
    )
    live: bool = Field(
        False, description="Start the simulated clock at now and never run ahead of the wall clock."
    )
    truth: Path | None = Field(
        None, description="Write the totals the pipeline must end up with to this JSON file."
    )
    max_in_flight: int = Field(
        1000, ge=1, le=30000, description="Published QoS 1 messages not yet acknowledged by the broker."
    )
    client_id: str = Field("cityingest-simulator", description="MQTT client id of the simulator.")
    catalogue_file: Path | None = Field(
        None, description="JSON file extending the metric catalogue (same shape as core/catalogue.json)."
    )
    register_url: str | None = Field(
        None,
        description="Base URL of the cityingest API to register the devices with (PUT /v1/devices/{id}) "
        "before publishing; unset = do not register.",
    )
    api_key_file: Path | None = Field(
        None, description="File holding the API key for --register-url (scopes devices:write, metrics:read)."
    )
    api_key: SecretStr | None = Field(
        None, description="The API key itself; prefer --api-key-file or the variable (flags show in ps)."
    )
    credentials_from_api: bool = Field(
        False,
        description="After registering the devices (--register-url), obtain each one's MQTT credentials "
        "from the API (POST /v1/devices/{id}/credentials, scope devices:write) and publish each device's "
        "messages on its own connection (user name and client id = device id); also "
        "CITYINGEST_SIM_CREDENTIALS_FROM_API. Off: one connection with --mqtt-username (what `make "
        "bench` measures: the pipeline's throughput, not thousands of device logins).",
    )
    unregistered_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Share of devices left unregistered on purpose (chosen by the seed), as new or rogue "
        "devices are in a real city.",
    )

    @model_validator(mode="before")
    @classmethod
    def _sim_prefixed_flag(cls, data: Any) -> Any:
        # The dev stack's name for the switch; the plain CITYINGEST_CREDENTIALS_FROM_API (or the flag) wins.
        alias = os.environ.get("CITYINGEST_SIM_CREDENTIALS_FROM_API")
        if isinstance(data, dict) and data.get("credentials_from_api") is None and alias is not None:
            return {**data, "credentials_from_api": alias}
        return data

    @field_validator("districts", mode="before")
    @classmethod
    def _split_districts(cls, value: Any) -> Any:
        return split_csv(value)

    @field_validator("malformed_reasons", mode="before")
    @classmethod
    def _split_reasons(cls, value: Any) -> Any:
        return split_csv(value)

    @field_validator("malformed_reasons")
    @classmethod
    def _check_reasons(cls, value: tuple[RejectReason, ...]) -> tuple[RejectReason, ...]:
        unknown = [r.value for r in value if r not in MALFORMED_REASONS]
        if unknown:
            choices = ", ".join(r.value for r in MALFORMED_REASONS)
            raise ValueError(f"{', '.join(unknown)}: not a payload fault; choose from {choices}")
        return tuple(dict.fromkeys(value))

    @field_validator("districts")
    @classmethod
    def _check_districts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one district is needed")
        for name in value:
            if _DISTRICT_NAME.match(name) is None:
                raise ValueError(f"district {name!r}: use up to 40 letters, digits, '-', '_' or '.'")
        if len(set(value)) != len(value):
            raise ValueError("district names must be unique")
        return value

    @field_validator("register_url")
    @classmethod
    def _check_register_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r}: give the API's base URL, e.g. http://127.0.0.1:8000")
        return value.rstrip("/")

    @field_validator("start")
    @classmethod
    def _aware_start(cls, value: datetime | None) -> datetime | None:
        # A naive time on the command line means UTC: every time inside cityingest is aware UTC.
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC) if value is not None else None

    @model_validator(mode="after")
    def _check_mix(self) -> SimulatorSettings:
        if self.single_share + self.batch_share + self.senml_share <= 0:
            raise ValueError("at least one of single_share, batch_share, senml_share must be positive")
        if self.citizen_share + self.partner_share > 1:
            raise ValueError("citizen_share + partner_share must not exceed 1")
        if self.malformed_rate > 0 and not self.malformed_reasons:
            raise ValueError("malformed_rate > 0 needs at least one of malformed_reasons")
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError("give --api-key or --api-key-file, not both")
        if self.register_url is not None and self.api_key is None and self.api_key_file is None:
            raise ValueError("--register-url needs an API key: give --api-key-file (or --api-key)")
        if self.credentials_from_api and self.register_url is None:
            raise ValueError("--credentials-from-api needs --register-url (the API that issues them)")
        return self

    def device_counts(self) -> dict[str, int]:
        """Devices per domain: the per-domain counts, or ``devices`` split 40/20/15/25."""
        if self.devices is None:
            return {
                "building": self.buildings,
                "water": self.water_points,
                "power": self.power_assets,
                "environment": self.environment_sensors,
            }
        total = self.devices
        weights = {"building": 0.40, "water": 0.20, "power": 0.15, "environment": 0.25}
        counts = {d: int(total * w) for d, w in weights.items()}
        # Largest remainder, in a fixed order, so the total is exact and deterministic.
        rest = total - sum(counts.values())
        by_remainder = sorted(weights, key=lambda d: -(total * weights[d] - counts[d]))
        for domain in by_remainder[:rest]:
            counts[domain] += 1
        return counts
