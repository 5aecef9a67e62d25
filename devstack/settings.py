"""Settings of ``cityingest dev``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from core.settings import TopicSettings


class DevSettings(TopicSettings):
    """Ports, state directory and simulator options of the embedded stack."""

    state_dir: Path = Field(Path(".cityingest"), description="Where the stack keeps its data and logs.")
    api_host: str = Field("127.0.0.1", description="Address the API listens on.")
    api_port: int = Field(8000, ge=1, le=65535, description="API port (a free one if the default is busy).")
    mqtt_port: int = Field(
        8883,
        ge=1,
        le=65535,
        description="MQTT TLS port, user name and password (a free one if the default is busy).",
    )
    mqtt_cert_port: int = Field(
        8884,
        ge=1,
        le=65535,
        description="MQTT TLS port requiring a client certificate of the dev CA, whose common name is the "
        "user name (a free one if the default is busy).",
    )
    insecure_mqtt: bool = Field(
        False,
        description="Also open a plain MQTT listener on 127.0.0.1 (--mqtt-plain-port) where anonymous "
        "clients may publish telemetry; for quick experiments only.",
    )
    mqtt_plain_port: int = Field(
        1883,
        ge=1,
        le=65535,
        description="The plain listener's port with --insecure-mqtt (a free one if the default is busy).",
    )
    kafka_port: int = Field(
        9092, ge=1, le=65535, description="Kafka port (a free one if the default is busy)."
    )
    pg_port: int = Field(
        55432, ge=1, le=65535, description="PostgreSQL port (a free one if the default is busy)."
    )
    consumers: int = Field(1, ge=1, description="Consumer processes in the consumer group.")
    simulator: bool = Field(True, description="Run the device simulator (--no-simulator to leave it out).")
    simulator_devices: int = Field(120, ge=1, description="Devices the simulator publishes for.")
    simulator_rate: float = Field(20.0, ge=0, description="Simulator messages per second.")
    simulator_seed: int = Field(
        1,
        description="Seed of the simulated city: the same devices and districts on every run, so a reused "
        "state directory stays consistent (readings still follow the wall clock).",
    )
    kafka_max_rss_mb: int = Field(
        2048,
        ge=0,
        description="Tansu keeps every record in memory: past this size the stack drains and restarts it "
        "(MQTT buffers meanwhile; nothing is lost). 0 = never.",
    )
    kafka_check_interval_s: float = Field(30.0, gt=0, description="How often to check Tansu's memory.")
    drain_timeout_s: float = Field(
        30.0, ge=0, description="On stop, how long to wait for the consumer to apply what Kafka holds."
    )
