"""Decoding a batch without I/O: the fast path agrees with the canonical decoder, shards are balanced."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from consumers.applied import Applied, InsertMode
from consumers.batch import prepare, split_by_partition
from consumers.storable import split_storable
from core.errors import EnvelopeError
from core.readings import MAX_TS_US, MIN_TS_US, decode_envelope
from core.types import MAX_DEVICE_ID_LENGTH, MAX_NAME_LENGTH
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
    st.sampled_from(
        [
            "",
            "x",
            "a\x00b",
            "é",
            "m" * MAX_NAME_LENGTH,
            "m" * (MAX_NAME_LENGTH + 1),
            "d" * (MAX_DEVICE_ID_LENGTH + 1),
        ]
    ),
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


def _canonical(raw: bytes) -> tuple[list[tuple[str, str, int, float, int]], set[str]] | None:
    """The rows the canonical decoder and the storability check make of ``raw``, and the reasons of its
    unstorable readings; None if the whole record is rejected."""
    try:
        env = decode_envelope(raw)
        good, bad = split_storable(env)
    except EnvelopeError:
        return None
    return [(env.device_id, r.metric, r.ts_us, r.value, r.flags) for r in good], {u.reason for u in bad}


@settings(max_examples=600, deadline=None)
@given(envelopes())
@example(_GOOD)
@example({**_GOOD, "v": True})
@example({**_GOOD, "readings": [["m", 1, float("inf"), 0]]})
@example({**_GOOD, "readings": [["m", -1, 1.0, 0], ["m", 1, 1.0, 0]]})
@example({**_GOOD, "readings": [["a\x00b", 1, 1.0, 0], ["m", MAX_TS_US, 1.0, 0], ["m", 1, 1.0, 0]]})
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
        assert batch.dead_letters[0].raw == raw
    else:
        rows, reasons = expected
        assert sorted(dl.reason for dl in batch.dead_letters) == sorted(reasons)
        assert [(*r[:3], r[3], r[4]) for r in batch.rows] == list(dict.fromkeys(rows))
        assert all(type(r[3]) is float for r in batch.rows)


def _envelope(*readings: list[Any]) -> bytes:
    return orjson.dumps({**_GOOD, "readings": list(readings)})


def test_a_reading_out_of_the_time_range_is_dead_lettered_alone() -> None:
    raw = _envelope(
        ["water_flow", MIN_TS_US, 1.0, 0],
        ["water_flow", MIN_TS_US - 1, 2.0, 0],
        ["water_flow", MAX_TS_US - 1, 3.0, 1],
        ["water_flow", MAX_TS_US, 4.0, 0],
    )
    batch = prepare([Record("t", 2, 7, b"dev-1", raw)], component_id="c", now_us=9)
    # The neighbours of the bad readings are stored, the boundaries of the range included.
    assert batch.rows == [
        ("dev-1", "water_flow", MIN_TS_US, 1.0, 0),
        ("dev-1", "water_flow", MAX_TS_US - 1, 3.0, 1),
    ]
    assert batch.readings == 2
    assert batch.devices["dev-1"].last_reading_us == MAX_TS_US - 1
    assert batch.offsets == {("t", 2): 8}
    [letter] = batch.dead_letters
    assert (letter.reason, letter.origin, letter.source, letter.device_id) == (
        "bad_timestamp",
        "t/2/7",
        "kafka",
        "dev-1",
    )
    # The letter carries the bad readings only, as an envelope of the record's device.
    bad = decode_envelope(letter.raw)
    assert [(r.metric, r.ts_us, r.value) for r in bad.readings] == [
        ("water_flow", MIN_TS_US - 1, 2.0),
        ("water_flow", MAX_TS_US, 4.0),
    ]
    assert (bad.device_id, bad.domain, bad.received_us) == ("dev-1", "water", _GOOD["received"])
    assert letter.message.startswith("2 of 4 readings not stored: reading 1: ")
    assert "reading 3: " in letter.message


def test_thousands_of_bad_readings_in_one_record_make_one_bounded_dead_letter() -> None:
    bad = [["water_flow", -i - 1, 1.0, 0] for i in range(5000)]
    raw = _envelope(*bad[:2500], ["water_flow", 100, 1.0, 0], *bad[2500:])
    batch = prepare([Record("t", 0, 0, b"k", raw)], component_id="c", now_us=9)
    assert batch.rows == [("dev-1", "water_flow", 100, 1.0, 0)]
    [letter] = batch.dead_letters
    assert len(decode_envelope(letter.raw).readings) == 5000
    assert len(letter.raw) < len(raw)
    assert len(letter.message) < 600, letter.message
    assert letter.message.endswith("; and 4995 more")


def test_each_kind_of_reading_fault_gets_one_dead_letter_and_the_good_readings_are_kept() -> None:
    raw = _envelope(
        ["a\x00b", 100, 1.0, 0],
        ["m" * (MAX_NAME_LENGTH + 1), 100, 1.0, 0],
        ["water_flow", -5, 1.0, 0],
        ["water_flow", 100, 2.0, 0],
    )
    batch = prepare([Record("t", 0, 3, b"k", raw)], component_id="c", now_us=9)
    assert batch.rows == [("dev-1", "water_flow", 100, 2.0, 0)]
    letters = {dl.reason: dl for dl in batch.dead_letters}
    assert sorted(letters) == ["bad_timestamp", "envelope_undecodable"]
    assert [r.metric[:3] for r in decode_envelope(letters["envelope_undecodable"].raw).readings] == [
        "a\x00b",
        "mmm",
    ]
    assert [r.ts_us for r in decode_envelope(letters["bad_timestamp"].raw).readings] == [-5]


def test_a_record_with_only_bad_readings_registers_no_device() -> None:
    batch = prepare(
        [Record("t", 0, 3, b"k", _envelope(["water_flow", -5, 1.0, 0]))], component_id="c", now_us=9
    )
    assert batch.rows == []
    assert not batch.devices
    assert batch.readings == 0
    assert [dl.reason for dl in batch.dead_letters] == ["bad_timestamp"]
    assert batch.offsets == {("t", 0): 4}


def test_a_fault_of_the_record_itself_dead_letters_the_whole_record() -> None:
    records = [
        Record("t", 0, 0, b"k", orjson.dumps({**_GOOD, "device": "d" * (MAX_DEVICE_ID_LENGTH + 1)})),
        Record("t", 0, 1, b"k", orjson.dumps({**_GOOD, "domain": "wa\x00ter"})),
    ]
    batch = prepare(records, component_id="c", now_us=9)
    assert batch.rows == []
    assert [(dl.reason, dl.origin, dl.raw) for dl in batch.dead_letters] == [
        ("envelope_undecodable", f"t/0/{r.offset}", r.value) for r in records
    ]


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
