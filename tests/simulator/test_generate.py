"""The message stream: deterministic, in all shapes, with the faults it was asked for."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from core.readings import to_us
from simulator.generate import Simulation, generate, resolve_start_us
from simulator.malformed import MALFORMED_REASONS
from simulator.model import Message
from simulator.settings import SimulatorSettings
from tests.simulator.conftest import START, small_city


def _stream(settings: SimulatorSettings) -> list[Message]:
    return list(generate(settings))


def test_same_seed_same_bytes(settings: SimulatorSettings) -> None:
    first = [(m.topic, m.payload) for m in _stream(settings)]
    second = [(m.topic, m.payload) for m in _stream(settings)]
    assert len(first) == settings.count
    assert first == second


def test_other_seed_other_bytes(settings: SimulatorSettings) -> None:
    first = [m.payload for m in _stream(settings)]
    other = [m.payload for m in _stream(small_city(seed=8))]
    assert first != other


def test_seq_is_the_position(settings: SimulatorSettings) -> None:
    assert [m.seq for m in _stream(settings)] == list(range(settings.count or 0))


def test_every_shape_and_fault_appears() -> None:
    messages = _stream(small_city(count=6000))
    shapes = Counter(m.shape for m in messages if m.malformed is None)
    assert set(shapes) == {"single", "batch", "senml"}
    assert {m.malformed for m in messages if m.malformed} == {r.value for r in MALFORMED_REASONS}
    assert any(m.duplicate_of is not None for m in messages)
    assert any(m.late for m in messages)
    assert any(m.reordered for m in messages)


def test_no_faults_when_rates_are_zero() -> None:
    zero = small_city(duplicate_rate=0, late_rate=0, out_of_order_rate=0, malformed_rate=0)
    messages = _stream(zero)
    assert all(m.malformed is None and m.duplicate_of is None for m in messages)
    assert not any(m.late or m.reordered for m in messages)
    # Without faults, each device's readings of a metric arrive in time order.
    last: dict[tuple[str, str], int] = {}
    for message in messages:
        for reading in message.readings:
            key = (message.device_id, reading.metric)
            assert reading.ts_us > last.get(key, 0)
            last[key] = reading.ts_us
    # And the city's messages come out in time order: a live run publishes them evenly, not in bursts.
    newest = [max(r.ts_us for r in m.readings) for m in messages]
    assert newest == sorted(newest)


def test_duplicates_resend_an_earlier_message_byte_for_byte(settings: SimulatorSettings) -> None:
    messages = _stream(settings)
    duplicates = [m for m in messages if m.duplicate_of is not None]
    assert duplicates
    for dup in duplicates:
        assert dup.duplicate_of is not None
        original = messages[dup.duplicate_of]
        assert original.seq < dup.seq
        assert (original.topic, original.payload, original.readings) == (dup.topic, dup.payload, dup.readings)


def test_late_messages_arrive_after_newer_readings(settings: SimulatorSettings) -> None:
    newest = 0
    late = 0
    for message in _stream(settings):
        own_newest = max(r.ts_us for r in message.readings) if message.readings else 0
        if message.late:
            late += 1
            # Held back for at least LATE_TICKS[0] ticks, so newer readings went out before it.
            assert own_newest < newest
        newest = max(newest, own_newest)
    assert late > 0


def test_reading_keys_are_unique_across_originals(settings: SimulatorSettings) -> None:
    keys = Counter(
        (m.device_id, r.metric, r.ts_us)
        for m in _stream(settings)
        if m.duplicate_of is None
        for r in m.readings
    )
    assert keys.most_common(1)[0][1] == 1


def test_sim_time_never_goes_back_and_covers_readings(settings: SimulatorSettings) -> None:
    previous = 0
    for message in _stream(settings):
        assert message.sim_time_us >= previous
        assert all(r.ts_us <= message.sim_time_us for r in message.readings)
        previous = message.sim_time_us


def test_batches_and_packs_carry_batch_size_readings(settings: SimulatorSettings) -> None:
    for message in _stream(settings):
        if message.malformed is not None:
            continue
        expected = 1 if message.shape == "single" else settings.batch_size
        assert len(message.readings) == expected
        doc = orjson.loads(message.payload)
        if message.shape == "batch":
            assert len(doc["readings"]) == expected
        elif message.shape == "senml":
            assert len(doc) == expected + 1


@pytest.mark.parametrize("live", [False, True])
def test_default_start_keeps_the_run_in_the_past(live: bool) -> None:
    now = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
    settings = small_city(start=None, live=live, count=4000)
    sim = Simulation(settings, now=now)
    if live:
        assert sim.start_us == to_us(now - timedelta(seconds=settings.time_step_s))
        return
    messages = list(sim.messages())
    assert max(m.sim_time_us for m in messages) <= to_us(now)
    # ...but not absurdly far back: the run ends within a day of now.
    assert max(m.sim_time_us for m in messages) > to_us(now - timedelta(days=1))


def test_given_start_wins() -> None:
    settings = small_city()
    assert resolve_start_us(settings, (), datetime.now(UTC)) == to_us(START)


def test_device_count_split_is_exact() -> None:
    for total in (0, 1, 7, 33, 100):
        counts = small_city(devices=total).device_counts()
        assert sum(counts.values()) == total


def test_without_count_the_stream_goes_on() -> None:
    stream = generate(small_city(count=None))
    assert sum(1 for _, _ in zip(range(5000), stream, strict=False)) == 5000


def test_a_run_is_reproduced_from_its_truth() -> None:
    # Without --start the run follows the wall clock; its truth records seed and start to replay it.
    first = Simulation(small_city(start=None, count=1500), now=datetime(2026, 11, 22, 12, 7, tzinfo=UTC))
    truth = first.new_truth().to_dict()
    again = Simulation(small_city(seed=truth["seed"], start=truth["start"], count=1500))
    assert [(m.topic, m.payload) for m in first.messages()] == [
        (m.topic, m.payload) for m in again.messages()
    ]


def test_a_run_without_seed_draws_one_and_records_it() -> None:
    sim = Simulation(small_city(seed=None, count=300))
    assert sim.new_truth().to_dict()["seed"] == sim.seed
    replay = Simulation(small_city(seed=sim.seed, count=300))
    assert [m.payload for m in sim.messages()] == [m.payload for m in replay.messages()]


def test_malformed_reasons_pick_the_kinds() -> None:
    chosen = "not_utf8,payload_too_large,bad_topic"
    messages = _stream(small_city(malformed_reasons=chosen, malformed_rate=0.2, count=2000))
    assert {m.malformed for m in messages if m.malformed} == set(chosen.split(","))


def test_oversized_payloads_are_just_over_the_limit() -> None:
    settings = small_city(malformed_reasons="payload_too_large", max_payload_bytes=5000, count=2000)
    sizes = [len(m.payload) for m in _stream(settings) if m.malformed]
    assert sizes
    assert all(5000 < size < 5300 for size in sizes)
