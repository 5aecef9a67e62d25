"""What Mosquitto's persistence settings cost, and what a kill -9 loses with each, while a backlog waits.

    python -m bench.mosquitto_persist [--backlog 30000] [--messages 30000] [--shapes single,senml50]

For each candidate setting it starts a real Mosquitto (the dev stack's configuration, persistence
changed only), makes a persistent QoS 1 session that stays away (the bridge behind: everything queues
for it), pre-fills ``--backlog`` messages, then:

* **throughput**: publishes ``--messages`` more at QoS 1 as fast as the broker acknowledges them
  (capped window, bench/mqttpub.py) and reports messages/s, readings/s and Mosquitto's CPU per 1,000
  messages. Every save writes the whole database, so a save costs O(backlog);
* **loss window**: devices publish at the target rate, Mosquitto is killed with SIGKILL at a random
  moment (2-14 s in), restarted on the same state, and the session counts what it gets back:
  acknowledged minus delivered is what was lost (also in seconds of traffic at the target rate).

Shapes: ``single`` is one reading per message (~90 bytes; target 6,000 msg/s end to end), ``senml50``
a SenML pack of 50 readings (~2.9 KB; target 30,000 readings/s = 600 msg/s). Not a test: it prints
figures for docs/benchmarks.md. The machine's other load shows in the figures: compare rows of one run.
"""

from __future__ import annotations

import argparse
import os
import random
import selectors
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from bench.ingest import cpu_seconds
from bench.mqttpub import MqttError, PacketStream, QoS1Publisher
from devstack.mosquitto import MosquittoBroker, Persistence
from devstack.process import free_port

SESSION: Final = "bench-behind"
TOPIC: Final = "city/water/bench-{}/telemetry"
WINDOW: Final = 2_000
MAX_RUN_S: Final = 20.0
CANDIDATES: Final = {
    "off": Persistence(enabled=False),
    "every 30 s": Persistence(autosave_interval=30),
    "every 10 s": Persistence(autosave_interval=10),
    "every 1 s": Persistence(autosave_interval=1),
    "every 10000 changes": Persistence(autosave_interval=10_000, autosave_on_changes=True),
    "every 1000 changes": Persistence(autosave_interval=1_000, autosave_on_changes=True),
    "every 100 changes": Persistence(autosave_interval=100, autosave_on_changes=True),
}


@dataclass(frozen=True)
class Shape:
    """Messages of one kind: readings per message and a payload builder."""

    name: str
    readings: int

    def payload(self, i: int) -> bytes:
        """Message ``i`` (its first reading's value is ``i``, so messages differ)."""
        if self.readings == 1:
            return orjson.dumps({"metric": "water_flow", "value": i + 0.5, "ts": "2026-11-01T00:00:00Z"})
        pack: list[dict[str, object]] = [{"bn": f"urn:dev:bench-{i % 100}:", "bt": 1.79e9, "n": "water_flow"}]
        pack[0]["v"] = float(i)
        pack += [{"n": "water_flow", "v": float(i + j), "t": j} for j in range(1, self.readings)]
        return orjson.dumps(pack)


TARGET_MSG_S: Final = {"single": 6_000.0, "senml50": 600.0}
"""The end-to-end targets: 6,000 single readings/s; 30,000 readings/s as SenML packs of 50."""
SHAPES: Final = {"single": Shape("single", 1), "senml50": Shape("senml50", 50)}


def stream(shape: Shape, start: int, count: int) -> PacketStream:
    """``count`` QoS 1 PUBLISH packets of ``shape`` over 100 device topics."""
    packets = PacketStream()
    for i in range(start, start + count):
        packets.append(TOPIC.format(i % 100), shape.payload(i))
    return packets


def publish(
    port: int,
    packets: PacketStream,
    kill_at: float | None = None,
    broker: MosquittoBroker | None = None,
    max_s: float = MAX_RUN_S,
    rate: float | None = None,
) -> int:
    """Publish the packets at QoS 1 (sending stops after ``max_s``); return how many the broker
    acknowledged. With ``kill_at`` (time.monotonic()) the broker is SIGKILLed then, or after the run;
    with ``rate`` no faster than that many messages a second."""
    pub = QoS1Publisher("127.0.0.1", port, f"bench-pub-{time.monotonic_ns()}", WINDOW)
    pub.connect()
    sent = 0
    started = time.monotonic()
    stop_sending = started + max_s
    try:
        while sent < len(packets) or pub.in_flight:
            if time.monotonic() >= stop_sending:
                packets_left = sent  # send nothing more; wait for what is in flight
                if not pub.in_flight:
                    break
            elif rate is not None:
                packets_left = min(len(packets), int(rate * (time.monotonic() - started)) + 1)
            else:
                packets_left = len(packets)
            if kill_at is not None and broker is not None and time.monotonic() >= kill_at:
                broker.kill()
                kill_at = None
            if sent < packets_left and pub.room > 0:
                n = min(pub.room, 200, packets_left - sent)
                pub.send(packets, sent, sent + n)
                sent += n
            pub.read_acks(0 if sent < packets_left and pub.room > 0 else 0.05)
    except (MqttError, OSError):
        pass  # the broker died under us: what it acknowledged so far is what counts
    finally:
        pub.close()
    if kill_at is not None and broker is not None:
        broker.kill()  # the run ended first: the kill comes right after the last PUBACK
    return pub.acked


def session(port: int, *, drain: bool) -> int:
    """Connect the persistent session (subscribing the first time); with ``drain``, count what it is
    delivered until nothing more comes for 3 s."""
    argv = ["mosquitto_sub", "-p", str(port), "-i", SESSION, "-c", "-q", "1", "-t", "city/+/+/telemetry"]
    if not drain:
        subprocess.run([*argv, "-E"], check=True, capture_output=True, timeout=30)
        return 0
    # mosquitto_sub's -W is a total timeout: count what arrives until the broker has sent nothing for 3 s.
    proc = subprocess.Popen([*argv, "-F", "%m"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    count = 0
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        buffered = b""
        while sel.select(timeout=3.0):
            chunk = os.read(proc.stdout.fileno(), 1 << 16)
            if not chunk:
                break
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            count += len(lines)
    proc.terminate()
    proc.wait(10)
    return count


def run_one(name: str, persistence: Persistence, shape: Shape, backlog: int, messages: int) -> str:
    """One row of the table for ``persistence`` and ``shape``."""
    with tempfile.TemporaryDirectory(prefix="cityingest-mqpersist-") as tmp:
        broker = MosquittoBroker(Path(tmp) / "mosquitto", free_port(), persistence=persistence)
        broker.start()
        try:
            session(broker.port, drain=False)
            queued = publish(broker.port, stream(shape, 0, backlog))
            if queued < backlog:
                return (
                    f"| {name} | {shape.name} | could not queue the {backlog:,}-message backlog within "
                    f"{MAX_RUN_S:.0f} s ({queued:,} taken) | | | | |"
                )
            packets = stream(shape, backlog, messages)
            pid = broker.pid
            assert pid is not None
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            acked = publish(broker.port, packets)
            elapsed, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
            rate = acked / elapsed
            # Loss window: devices publish at the target rate; SIGKILL at a random moment of that.
            target = TARGET_MSG_S[shape.name]
            run_s = random.uniform(2.0, 14.0)  # noqa: S311 - a moment, not a secret
            more = stream(shape, backlog + messages, int(target * run_s) + 1)
            acked_before_kill = publish(broker.port, more, time.monotonic() + run_s, broker, rate=target)
            broker.stop()
            broker.start()
            delivered = session(broker.port, drain=True)
        finally:
            broker.stop()
    total = backlog + acked + acked_before_kill
    lost = total - delivered
    if not persistence.enabled:
        bound = "everything queued"
    elif persistence.autosave_on_changes:
        bound = f"{persistence.autosave_interval:,} messages"
    else:
        # Mosquitto saves once *more than* the interval (whole seconds) has passed since the last save.
        bound = f"~{persistence.autosave_interval + 1} s of traffic"
    return (
        f"| {name} | {shape.name} | {rate:,.0f} | {rate * shape.readings:,.0f} | "
        f"{1000 * cpu / max(acked, 1):.3f} | {lost:,} of {total:,} ({lost / target:.2f} s) | {bound} |"
    )


def main() -> None:
    """Print one markdown table row per setting and shape."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backlog", type=int, default=30_000, help="messages queued before measuring")
    parser.add_argument("--messages", type=int, default=30_000, help="messages per measured run")
    parser.add_argument("--shapes", default="single,senml50", help="comma-separated: single, senml50")
    parser.add_argument("--only", default="", help="comma-separated candidate names (default: all)")
    args = parser.parse_args()
    only = {n.strip() for n in args.only.split(",") if n.strip()}
    print(
        f"backlog {args.backlog:,} messages queued for an absent QoS 1 session, {args.messages:,} per run\n"
        "| persistence | shape | msg/s | readings/s | mosquitto CPU s per 1,000 msg | lost on one kill -9 "
        "(s of traffic) | loss bound |\n|---|---|---|---|---|---|---|",
        flush=True,
    )
    for shape_name in args.shapes.split(","):
        shape = SHAPES[shape_name.strip()]
        count = args.messages if shape.readings == 1 else max(args.messages // 10, 1000)
        backlog = args.backlog if shape.readings == 1 else max(args.backlog // 10, 1000)
        for name, persistence in CANDIDATES.items():
            if only and name not in only:
                continue
            print(run_one(name, persistence, shape, backlog, count), flush=True)


if __name__ == "__main__":
    main()
