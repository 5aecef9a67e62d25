"""Decoding a batch without I/O: the fast path agrees with the canonical decoder, shards are balanced."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from consumers.applied import Applied, InsertMode
from consumers.batch import MAX_ID_CHARS, check_storable, prepare, split_by_partition
from core.errors import EnvelopeError
from core.readings import decode_envelope
from tests.consumers.streams import Record

_GOOD: dict[str, Any] = {
    "v": 1,
    "device": "dev-1",
    "domain": "water",
    "bridge": "b-1",
    "received": 1_700_000_000_000_000,
    "readings": [
        ["water_flow", 1_700_000_000_000_000, 12.5, 0],
        ["water_volume_m3", 1_700_000_000_000_000, 3, 4],
    ],
}

# Values around every limit the decoders check, of every JSON type.
_odd_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(
        [0, 1, 2, -1, 7, 8, 2**53, 2**63 - 1, 32_503_680_000_000_000, 32_503_680_000_000_000 - 1]
    ),
    st.sampled_from([0.0, 1.0, -2.5, 1e308, 1.5e300]),
    st.sampled_from(["", "x", "a\x00b", "é", "m" * MAX_ID_CHARS, "m" * (MAX_ID_CHARS + 1)]),
)
_odd_values = st.recursive(
    _odd_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)


@st.composite
def envelopes(draw: st.DrawFn) -> Any:
    """Mostly valid envelopes with one or two fields replaced by something odd."""
    env: dict[str, Any] = orjson.loads(orjson.dumps(_GOOD))
    for _ in range(draw(st.integers(0, 2))):
        if draw(st.booleans()):
            key = draw(st.sampled_from(sorted(env)))
            env[key] = draw(_odd_values)
        elif isinstance(env.get("readings"), list) and env["readings"]:
            reading = env["readings"][0]
            if isinstance(reading, list) and reading:
                reading[draw(st.integers(0, len(reading) - 1))] = draw(_odd_values)
    return draw(st.sampled_from([env, [env], "x"])) if draw(st.integers(0, 20)) == 0 else env


def _canonical(raw: bytes) -> list[tuple[str, str, int, float, int]] | None:
    """The rows the canonical decoder and the storability check make of ``raw``; None if rejected."""
    try:
        env = decode_envelope(raw)
        check_storable(env)
    except EnvelopeError:
        return None
    return [(env.device_id, r.metric, r.ts_us, r.value, r.flags) for r in env.readings]


@settings(max_examples=600, deadline=None)
@given(envelopes())
@example(_GOOD)
@example({**_GOOD, "v": True})
@example({**_GOOD, "readings": [["m", 1, float("inf"), 0]]})
def test_prepare_agrees_with_the_canonical_decoder(env: Any) -> None:
    try:
        raw = orjson.dumps(env)
    except orjson.JSONEncodeError:
        raw = b"{not json"
    batch = prepare([Record("t", 0, 5, b"k", raw)], component_id="c", now_us=9)
    expected = _canonical(raw)
    assert batch.offsets == {("t", 0): 6}
    if expected is None:
        assert batch.rows == []
        assert len(batch.dead_letters) == 1
    else:
        assert batch.dead_letters == []
        assert [(*r[:3], r[3], r[4]) for r in batch.rows] == list(dict.fromkeys(expected))
        assert all(type(r[3]) is float for r in batch.rows)


def test_prepare_keeps_the_first_of_duplicate_readings_and_tracks_devices() -> None:
    first = {**_GOOD, "received": 10, "readings": [["flow", 100, 1.0, 0], ["flow", 100, 2.0, 0]]}
    second = {**_GOOD, "received": 5, "readings": [["flow", 100, 3.0, 0], ["flow", 300, 4.0, 1]]}
    records = [Record("t", 1, i, b"k", orjson.dumps(e)) for i, e in enumerate([first, second])]
    batch = prepare(records, component_id="c", now_us=0)
    assert batch.rows == [("dev-1", "flow", 100, 1.0, 0), ("dev-1", "flow", 300, 4.0, 1)]
    assert (batch.readings, batch.batch_duplicates) == (4, 2)
    seen = batch.devices["dev-1"]
    assert (seen.domain, seen.first_received_us, seen.last_received_us, seen.last_reading_us) == (
        "water",
        5,
        10,
        300,
    )


def test_split_by_partition_balances_whole_partitions() -> None:
    sizes = {0: 50, 1: 40, 2: 30, 3: 20, 4: 10, 5: 10}
    records = [Record("t", p, o, None, None) for p, n in sizes.items() for o in range(n)]
    groups = split_by_partition(records, 2)
    assert sorted(len(g) for g in groups) == [80, 80]
    for g in groups:
        partitions = {r.partition for r in g}
        # Whole partitions, in their order within a group.
        assert sum(sizes[p] for p in partitions) == len(g)
        for p in partitions:
            assert [r.offset for r in g if r.partition == p] == list(range(sizes[p]))
    assert split_by_partition(records, 1) == [records]
    assert split_by_partition([], 3) == []
    assert len(split_by_partition(records[:50], 3)) == 1


def test_insert_mode_backs_off_while_batches_meet_stored_readings() -> None:
    mode = InsertMode()
    clean, met = Applied(10, 0, 0, 0), Applied(5, 5, 0, 5)
    assert mode.assume_new()
    mode.record(met)  # one batch meeting stored readings: try again at once
    assert mode.assume_new()
    mode.record(clean)  # the attempt succeeded: nothing remembered
    mode.record(met)
    assert mode.assume_new()
    skipped = []
    for _ in range(8):
        mode.record(met)  # they keep coming: skip 1, 2, 4 ... 64 batches
        n = 0
        while not mode.assume_new():
            mode.record(clean)
            n += 1
        skipped.append(n)
    assert skipped == [1, 2, 4, 8, 16, 32, 64, 64]
    mode.record(clean)  # an attempt succeeded: back to trying every batch
    mode.record(met)
    assert mode.assume_new()
