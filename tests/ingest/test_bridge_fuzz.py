"""Hypothesis throws arbitrary JSON and SenML at the whole bridge path: published at QoS 1 through real
Mosquitto to a running bridge writing to real Tansu. Whatever comes, every message is acknowledged and a
good reading published after it arrives."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from core.topics import telemetry_filter
from devstack.mosquitto import MosquittoBroker
from ingest.bridge import Bridge
from tests.conftest import KafkaTopics
from tests.ingest.support import (
    TopicReader,
    eventually,
    publish,
    reading_msg,
    wired_settings,
)
from tests.ingest.test_parse_fuzz import METRICS, UNITS, json_scalars, json_values, readings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Numbers at and beyond every limit: float extremes, integers past 64 bits and past float range, times
# millions of years away, NaN and infinities (which devices with naive serialisers send).
limits = st.sampled_from(
    [
        *(-1e15, 1e15, -9.3e12, 9.3e12, -2e9, 2**28, 32_503_680_000),  # times: far, just past 64 bits, edges
        *(1e303, -1e303, 1.7976931348623157e308, 5e-324),  # float extremes
        *(2**63, -(2**63) - 1, 2**64, 10**400),  # integers past 64 bits and past float range
    ]
)
extreme_numbers = st.one_of(
    limits,
    st.floats(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.integers(min_value=-(10**20), max_value=10**20).map(float),
)
plain_numbers = st.floats(min_value=-1e6, max_value=1e6)
senml_records = st.fixed_dictionaries(
    {},
    optional={
        "bn": st.sampled_from(["", "urn:dev:d-1:", "d-1/", "urn:dev:other:"]) | json_scalars,
        "bt": extreme_numbers | json_scalars,
        "bu": st.sampled_from(UNITS) | json_scalars,
        "bv": extreme_numbers,
        "bs": extreme_numbers,
        "bver": st.integers(min_value=0, max_value=12) | json_scalars,
        "n": st.sampled_from([*METRICS, "d-1/water_flow", "x y"]) | json_scalars,
        "u": st.sampled_from(UNITS) | json_scalars,
        "v": extreme_numbers | json_scalars,
        "s": extreme_numbers | json_scalars,
        "t": extreme_numbers | json_scalars,
    },
)
# Nearly valid records and readings reach the deepest checks (time, unit conversion, encoding).
near_senml = st.fixed_dictionaries(
    {"n": st.sampled_from(METRICS), "v": plain_numbers | extreme_numbers},
    optional={
        "bt": extreme_numbers,
        "t": extreme_numbers,
        "bv": extreme_numbers,
        "s": extreme_numbers,
        "bs": extreme_numbers,
        "u": st.sampled_from(UNITS),
    },
)
times = extreme_numbers | st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat())
near_readings = st.fixed_dictionaries(
    {"metric": st.sampled_from(METRICS), "value": plain_numbers | extreme_numbers},
    optional={"ts": times, "unit": st.sampled_from(UNITS)},
)
# Most messages are nearly valid (listed twice: one_of draws its alternatives evenly), so they reach the
# deepest checks; the rest is anything at all.
near_documents = st.one_of(
    st.lists(near_senml, min_size=1, max_size=4),
    near_readings,
    st.fixed_dictionaries({"readings": st.lists(near_readings, min_size=1, max_size=4)}),
)
any_documents = st.one_of(
    st.lists(near_senml | senml_records | json_values, max_size=6),
    st.fixed_dictionaries({"readings": st.lists(near_readings | readings | json_values, max_size=6)}),
    readings,
    json_values,
)
documents = st.one_of(near_documents, near_documents, any_documents)
payloads = st.binary(max_size=64) | documents.map(
    lambda doc: json.dumps(doc).encode("utf-8", "surrogatepass")
)
# Topic levels MQTT and Mosquitto take from a publisher: UTF-8 without wildcards, NUL or control characters.
levels = st.text(st.characters(exclude_categories=("Cc", "Cs", "Cn"), exclude_characters="+#/"), max_size=12)
valid_tails = st.sampled_from(["water/d-1/telemetry", "power/d-1/telemetry", "building/d-2/telemetry"])
topic_tails = st.one_of(
    valid_tails,
    valid_tails,
    valid_tails,
    st.tuples(
        st.sampled_from(["water", "environment", "gas", ""]), st.sampled_from(["d-1", "d-2"]) | levels
    ).map(lambda t: f"{t[0]}/{t[1]}/telemetry"),
    st.lists(levels, min_size=1, max_size=5).map("/".join),
)


@dataclass
class Running:
    """The bridge under test, a reader of its readings topic, and what was published so far."""

    bridge: Bridge
    readings: TopicReader
    prefix: str
    host: str
    port: int
    expected_acks: int = 0


@pytest.fixture
async def running(
    mqtt_broker: MosquittoBroker, kafka_bootstrap: str, kafka_topics: KafkaTopics, mqtt_prefix: str
) -> AsyncIterator[Running]:
    settings_ = wired_settings(mqtt_broker, kafka_bootstrap, kafka_topics, mqtt_prefix)
    async with Bridge(settings_) as bridge:
        await eventually(lambda: not bridge.not_ready_reasons(), 30, "the bridge to be ready")
        async with TopicReader(kafka_bootstrap, kafka_topics.readings) as reader:
            yield Running(bridge, reader, mqtt_prefix, mqtt_broker.host, mqtt_broker.port)


_sentinels = itertools.count(1)


@settings(
    max_examples=60,
    deadline=None,
    # One bridge serves every example on purpose: starting one per example would test startup, not intake.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(st.tuples(topic_tails, payloads), min_size=1, max_size=6))
async def test_arbitrary_payloads_never_stop_the_bridge(
    running: Running, batch: list[tuple[str, bytes]]
) -> None:
    bridge, reader = running.bridge, running.readings
    flt = telemetry_filter(running.prefix)
    messages = [(f"{running.prefix}/{tail}", payload) for tail, payload in batch]
    value = float(next(_sentinels))
    messages.append(reading_msg(running.prefix, "sentinel", value))
    # Only what matches the bridge's subscription reaches it; each of those must be acknowledged.
    running.expected_acks += sum(topic_matches_sub(flt, topic) for topic, _ in messages)
    await publish(running.host, running.port, messages)
    await reader.until(lambda: value in reader.values(), 30, f"the sentinel reading {value}")
    await eventually(
        lambda: bridge.stats.messages_acked == running.expected_acks, 30, "every message acknowledged"
    )
    assert bridge.stats.messages_received == running.expected_acks
    assert bridge.in_flight == 0
    # Nothing here is a bug of ours: every payload got a reason of its own, none needed the safety net.
    assert bridge.stats.rejected["internal_error"] == 0
    assert bridge.stats.messages_failed == 0
    assert bridge.not_ready_reasons() == []
