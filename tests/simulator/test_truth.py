"""The truth: exact totals, duplicates once, malformed apart, reset-aware counter increase."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.generate import Simulation
from simulator.malformed import MALFORMED_REASONS
from simulator.model import Message, SimReading
from simulator.settings import SimulatorSettings
from simulator.truth import IncreaseTracker, Truth, reset_aware_increase
from tests.simulator.conftest import seeded, small_city

counter_values = st.lists(st.integers(min_value=0, max_value=10**9), max_size=200)


@given(counter_values)
def test_increase_is_never_negative(values: list[int]) -> None:
    assert reset_aware_increase(values) >= 0


@given(st.lists(st.integers(min_value=0, max_value=10**6), max_size=100))
def test_increase_of_a_growing_counter_is_last_minus_first(steps: list[int]) -> None:
    values = [sum(steps[: i + 1]) for i in range(len(steps))]
    expected = values[-1] - values[0] if values else 0
    assert reset_aware_increase(values) == expected


def test_increase_after_a_reset_counts_from_zero() -> None:
    assert reset_aware_increase([100, 150, 20, 50]) == 50 + 20 + 30


@given(counter_values, st.integers(min_value=1, max_value=8), st.randoms(use_true_random=False))
@settings(max_examples=200)
def test_tracker_matches_a_full_sort_when_readings_are_a_little_out_of_order(
    values: list[int], window: int, rnd: random.Random
) -> None:
    series = list(enumerate(values))
    # Shuffle inside blocks no longer than the tracker's window: bounded lateness.
    shuffled: list[tuple[int, int]] = []
    for i in range(0, len(series), window):
        block = series[i : i + window]
        rnd.shuffle(block)
        shuffled.extend(block)
    tracker = IncreaseTracker(window=window)
    for ts, value in shuffled:
        tracker.add(ts, value)
    assert tracker.increase == reset_aware_increase(values)


def _messages(settings: SimulatorSettings) -> tuple[Simulation, list[Message]]:
    sim = Simulation(settings)
    return sim, list(sim.messages())


def _truth(sim: Simulation, messages: list[Message]) -> Truth:
    truth = sim.new_truth()
    for message in messages:
        truth.record(message)
    return truth


def test_truth_counts_distinct_readings_once() -> None:
    sim, messages = _messages(small_city())
    truth = _truth(sim, messages)
    distinct = {
        (m.device_id, r.metric, r.ts_us): r.value_milli
        for m in messages
        if m.malformed is None
        for r in m.readings
    }
    assert truth.readings == len(distinct)
    doc = truth.to_dict()
    assert doc["readings"]["total"] == len(distinct)
    assert sum(s["count"] for per in doc["series"].values() for s in per.values()) == len(distinct)
    assert round(sum(t["sum"] for t in doc["metrics"].values()), 3) == round(sum(distinct.values()) / 1000, 3)
    assert doc["messages"]["total"] == len(messages)
    assert doc["messages"]["duplicates"] == sum(m.duplicate_of is not None for m in messages) > 0
    assert doc["messages"]["malformed"] == sum(doc["malformed"].values()) > 0


def test_truth_does_not_depend_on_acknowledgement_order() -> None:
    sim, messages = _messages(small_city())
    shuffled = list(messages)
    seeded(3).shuffle(shuffled)
    assert _truth(sim, messages).to_dict() == _truth(sim, shuffled).to_dict()


def test_a_duplicate_counts_when_its_original_was_lost() -> None:
    sim, messages = _messages(small_city())
    dup = next(m for m in messages if m.duplicate_of is not None)
    without_original = [m for m in messages if m.seq != dup.duplicate_of]
    assert _truth(sim, without_original).readings == _truth(sim, messages).readings


def test_counter_increase_matches_the_stored_series() -> None:
    sim, messages = _messages(small_city(count=5000, reset_rate=0.05))
    doc = _truth(sim, messages).to_dict()
    series: dict[tuple[str, str], dict[int, int]] = {}
    for message in messages:
        for reading in message.readings:
            if reading.counter:
                series.setdefault((message.device_id, reading.metric), {})[reading.ts_us] = (
                    reading.value_milli
                )
    resets = 0
    for (device_id, metric), stored in series.items():
        entry = doc["series"][device_id][metric]
        expected = reset_aware_increase(v for _, v in sorted(stored.items()))
        assert entry["increase"] == expected / 1000
        assert entry["increase"] >= 0
        resets += entry["resets"]
    assert resets > 0


def test_counters_only_grow_except_at_resets() -> None:
    _, messages = _messages(small_city(count=5000, late_rate=0, out_of_order_rate=0))
    last: dict[tuple[str, str], SimReading] = {}
    for message in messages:
        if message.duplicate_of is not None:
            continue
        for reading in message.readings:
            key = (message.device_id, reading.metric)
            if reading.counter and key in last:
                assert reading.reset or reading.value_milli >= last[key].value_milli
            last[key] = reading


def test_truth_file_is_json_with_devices_and_series(tmp_path: Path) -> None:
    sim, messages = _messages(small_city(count=500))
    truth = _truth(sim, messages)
    path = tmp_path / "truth.json"
    truth.write(path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["seed"] == 7
    assert set(doc["devices"]) == {d.device_id for d in sim.devices}
    assert set(doc["series"]) <= set(doc["devices"])
    assert {d["provenance"] for d in doc["devices"].values()} == {"official", "citizen", "partner"}
    assert doc["start"] == "2026-11-02T00:00:00Z"


@given(
    seed=st.integers(min_value=0, max_value=2**31),
    duplicate_rate=st.floats(min_value=0, max_value=0.5),
    late_rate=st.floats(min_value=0, max_value=0.3),
    out_of_order_rate=st.floats(min_value=0, max_value=0.3),
    reset_rate=st.floats(min_value=0, max_value=0.5),
    batch_size=st.integers(min_value=1, max_value=12),
)
@settings(max_examples=25, deadline=None)
def test_truth_invariants_hold_for_any_fault_mix(
    seed: int,
    duplicate_rate: float,
    late_rate: float,
    out_of_order_rate: float,
    reset_rate: float,
    batch_size: int,
) -> None:
    sim, messages = _messages(
        small_city(
            seed=seed,
            count=600,
            duplicate_rate=duplicate_rate,
            late_rate=late_rate,
            out_of_order_rate=out_of_order_rate,
            reset_rate=reset_rate,
            batch_size=batch_size,
        )
    )
    doc = _truth(sim, messages).to_dict()
    distinct = {(m.device_id, r.metric, r.ts_us) for m in messages for r in m.readings}
    assert doc["readings"]["total"] == len(distinct)
    for per_device in doc["series"].values():
        for entry in per_device.values():
            assert entry["count"] > 0
            assert entry["min"] <= entry["max"]
            assert entry.get("increase", 0) >= 0


def test_dead_letters_are_counted_by_reason() -> None:
    sim, messages = _messages(small_city(malformed_rate=0.2))
    doc = _truth(sim, messages).to_dict()
    expected = Counter(m.malformed for m in messages if m.malformed is not None)
    assert doc["dead_letters"] == dict(sorted(expected.items()))
    assert sum(doc["dead_letters"].values()) == doc["messages"]["malformed"]
    assert len(doc["dead_letters"]) == len(MALFORMED_REASONS)


def test_malformed_payloads_leave_the_store_totals_alone() -> None:
    sim, messages = _messages(small_city(malformed_rate=0.2, non_canonical_unit_share=0.5))
    with_faults = _truth(sim, messages).to_dict()
    without = _truth(sim, [m for m in messages if m.malformed is None]).to_dict()
    for key in ("readings", "metrics", "series", "domains", "districts", "provenance", "shapes"):
        assert with_faults[key] == without[key]
    assert without["dead_letters"] == {}
