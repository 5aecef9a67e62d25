"""The overview's parts: component targets, Prometheus counters, rates, HTTP answers, excerpts."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from pydantic import ValidationError

from api.ops.config import ComponentTarget, parse_target
from api.ops.http import MAX_BYTES, http_get, probe_client
from api.ops.kafka import TailRecord
from api.ops.lag import build_lag, unsettled_warning
from api.ops.overview import dead_letter_sample, excerpt
from api.ops.prom import parse_metrics
from api.ops.rates import RateTracker, counter_delta, rates_between
from api.settings import ApiSettings
from consumers.metrics import ConsumerMetrics
from core.deadletter import DeadLetter, RejectedItem, RejectedReadings
from ingest.metrics import BridgeStats, build_registry, render


def test_targets_parse_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "CITYINGEST_OPS_COMPONENTS",
        " bridge-1=http://bridge-1:9100, consumers=dns+http://cityingest-consumer:9101/,local=http://[::1]:9102",
    )
    settings = ApiSettings()
    assert settings.ops_components == (
        ComponentTarget("bridge-1", "bridge-1", 9100),
        ComponentTarget("consumers", "cityingest-consumer", 9101, discover=True),
        ComponentTarget("local", "::1", 9102),
    )
    assert [str(t) for t in settings.ops_components] == [
        "bridge-1=http://bridge-1:9100",
        "consumers=dns+http://cityingest-consumer:9101",
        "local=http://[::1]:9102",
    ]
    monkeypatch.delenv("CITYINGEST_OPS_COMPONENTS")
    assert ApiSettings().ops_components == ()
    assert parse_target("b=http://host").port == 80


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("http://bridge:9100", "name=http://host:port"),
        ("bad name=http://bridge:9100", "name=http://host:port"),
        ("b=https://bridge:9100", "plain HTTP"),
        ("b=bridge:9100", "plain HTTP"),
        ("b=http://bridge:9100/metrics", "base URL only"),
        ("b=http://bridge:99999", "port"),
    ],
)
def test_bad_targets_say_what_is_wrong(entry: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_target(entry)


def test_duplicate_target_names_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYINGEST_OPS_COMPONENTS", "b=http://x:1,b=http://y:2")
    with pytest.raises(ValidationError, match="unique: b"):
        ApiSettings()


def test_bridge_counters_from_its_real_exposition() -> None:
    stats = BridgeStats(messages_received=12, readings_forwarded=30, dead_letters_written=3)
    stats.rejected.update({"invalid_json": 2, "unknown_metric": 1})
    scrape = parse_metrics(render(build_registry(stats, lambda: 0, lambda: True)).decode())
    assert scrape.kind == "bridge"
    assert scrape.counters == {"ingest_messages": 12, "ingest_readings": 30, "dead_letters": 3}
    assert scrape.rejected == {"invalid_json": 2, "unknown_metric": 1}


def test_consumer_counters_from_its_real_exposition() -> None:
    metrics = ConsumerMetrics()
    assert parse_metrics(metrics.render().decode()).counters == {
        "consume_readings": 0,
        "stored_readings": 0,
        "dead_letters": 0,
    }
    metrics.readings.inc(40)
    metrics.stored.inc(38)
    metrics.dead_letters.labels("undecodable_record").inc(2)
    scrape = parse_metrics(metrics.render().decode())
    assert scrape.kind == "consumer"
    assert scrape.counters == {"consume_readings": 40, "stored_readings": 38, "dead_letters": 2}
    assert scrape.rejected == {"undecodable_record": 2}


def test_unparseable_metrics_raise_value_error() -> None:
    with pytest.raises(ValueError, match="float"):
        parse_metrics('cityingest_bridge_rejected_total{reason="x" 1\n')


def test_counter_delta_survives_a_restart() -> None:
    assert counter_delta(10, 15) == 5
    assert counter_delta(10, 3) == 3  # restarted from zero, then counted 3


def test_rates_sum_sources_seen_in_both_samples() -> None:
    before = {"bridge-1": {"ingest_readings": 100.0}, "bridge-2": {"ingest_readings": 50.0}}
    after = {
        "bridge-1": {"ingest_readings": 120.0},
        "bridge-2": {"ingest_readings": 5.0},  # restarted
        "bridge-3": {"ingest_readings": 999.0},  # new: no earlier value to compare with
    }
    assert rates_between(before, after, 5.0) == {"ingest_readings": (20 + 5) / 5}


def test_tracker_compares_with_a_sample_old_enough() -> None:
    tracker = RateTracker(min_window_s=5, keep_s=60)
    first = tracker.observe(100.0, {"b": {"x": 0.0}})
    assert (first.window_s, first.per_s) == (None, {})
    young = tracker.observe(102.0, {"b": {"x": 20.0}})
    assert (young.window_s, young.per_s) == (2.0, {"x": 10.0})  # only a young sample to compare with
    tracker.observe(104.0, {"b": {"x": 30.0}})
    later = tracker.observe(108.0, {"b": {"x": 50.0}})
    # The newest sample at least 5 s old is the one at 102 s.
    assert (later.window_s, later.per_s) == (6.0, {"x": 5.0})
    # Samples older than keep_s are forgotten.
    stale = tracker.observe(200.0, {"b": {"x": 60.0}})
    assert stale.window_s is None


ANSWERS = {
    b"/short": b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\nokEXTRA",
    b"/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
    b"/ssh": b"SSH-2.0-OpenSSH\r\n\r\n",
    b"/cut": b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
    b"/huge": b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * (MAX_BYTES + 1),
}


async def test_http_answers_through_the_client() -> None:
    """The overview's GET on a real socket: exact bodies, chunks, the Host header, and refusals."""
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        heads.append(head)
        writer.write(ANSWERS[head.split(b" ")[1]])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with probe_client(5.0) as client:
            short = await http_get(client, f"{base}/short", "consumers:9101")
            assert (short.status, short.body) == (503, b"ok")
            assert b"\r\nhost: consumers:9101\r\n" in heads[0].lower()
            assert (await http_get(client, f"{base}/chunked", "x")).body == b"abcde"
            for broken in ("/ssh", "/cut"):
                with pytest.raises(httpx.RemoteProtocolError):
                    await http_get(client, f"{base}{broken}", "x")
            with pytest.raises(ValueError, match="larger than"):
                await http_get(client, f"{base}/huge", "x")
    finally:
        server.close()
        await server.wait_closed()


def test_excerpts_are_one_line_of_text() -> None:
    assert excerpt(b'{"a": 1}') == '{"a": 1}'
    assert excerpt(b"line1\nline2\x00\x1b[31m") == "line1\\nline2\\x00\\x1b[31m"
    assert excerpt(b"\xff\xfeok") == "\ufffd\ufffdok"
    assert excerpt(b"x" * 500, limit=10) == "x" * 10 + "…"
    assert excerpt(b"<script>alert(1)</script>") == "<script>alert(1)</script>"  # escaped by the page


def test_lag_names_partitions_whose_end_may_be_low() -> None:
    assert unsettled_warning(frozenset()) is None
    warning = unsettled_warning({("readings", 4), ("readings", 1)})
    assert warning is not None
    assert warning.startswith("end offsets of readings/1, readings/4 may be low")
    lag = build_lag([], {("readings", 1): 5}, warning)
    assert lag.warning == warning


def test_a_dead_letter_of_rejected_readings_shows_them_by_reason() -> None:
    readings = RejectedReadings(
        {"unknown_metric": 9000, "non_numeric_value": 38},
        2,
        (RejectedItem(0, "unknown_metric", "reading 0: x"),),
    )
    dl = DeadLetter(
        "unknown_metric", "9038 rejected", "mqtt", "city/water/d/telemetry", b"{}", 1, "b-1", "d", readings
    )
    sample = dead_letter_sample("readings.dlq", TailRecord(0, 7, 1_000, dl, b""))
    assert (sample.reason, sample.rejected_readings) == (
        "unknown_metric",
        {"unknown_metric": 9000, "non_numeric_value": 38},
    )
    whole = DeadLetter("invalid_json", "not JSON", "mqtt", "city/water/d/telemetry", b"{", 1, "b-1", "d")
    assert dead_letter_sample("readings.dlq", TailRecord(0, 8, 1_000, whole, b"")).rejected_readings is None
