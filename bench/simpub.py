"""The end-to-end benchmark's device side: the simulator's messages, published from a process of their own.

    python -m bench.simpub --settings FILE --mqtt-port N --truth FILE --result FILE [--rate R] [--probes ...]

Generates the seeded stream with the simulator (``simulator.Simulation``), records its truth, encodes
every message as an MQTT PUBLISH, connects, prints one ``ready`` line of JSON on stdout and waits for a
line on stdin before publishing, so the benchmark's clock starts at the first publish and not at
generation. Publishes as fast as the window of unacknowledged messages allows (``--rate 0``) or paced,
with latency probes interleaved at fixed times. Writes the truth (once the broker has acknowledged every
message) and a result file: first publish and last acknowledgement (``time.monotonic``, a clock all
processes of the machine share), the send time of each probe, and its own peak memory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final, Literal

from bench.mqttpub import PacketStream, QoS1Publisher
from bench.procmem import status_kb
from core.readings import from_us
from core.topics import telemetry_topic
from core.types import Provenance
from simulator.generate import Simulation, resolve_start_us
from simulator.model import Device, SimReading
from simulator.payloads import render
from simulator.settings import DEFAULT_DISTRICTS, SimulatorSettings

PROBE_METRIC: Final = "water_flow"
PROBE_DOMAIN: Final = "water"
SENML_PACK: Final = 50
ACK_TIMEOUT_S: Final = 300.0
Shape = Literal["single", "senml"]


def workload_settings(
    name: str, shape: Shape, *, devices: int, count: int, seed: int, now: datetime
) -> SimulatorSettings:
    """The city of one benchmark phase: its own districts (so device ids never meet another phase's), every
    device sending ``shape`` (SenML packs of 50), the simulator's default faults, and a start fixed now so
    that every process generates the same bytes."""
    settings = SimulatorSettings.model_validate(
        {
            "seed": seed,
            "devices": devices,
            "count": count,
            "districts": [f"{name}-{d}" for d in DEFAULT_DISTRICTS],
            "single_share": 1.0 if shape == "single" else 0.0,
            "batch_share": 0.0,
            "senml_share": 1.0 if shape == "senml" else 0.0,
            "batch_size": SENML_PACK,
            "rate": 0,
        }
    )
    devices_of_city = Simulation(settings).devices
    start_us = resolve_start_us(settings, devices_of_city, now)
    return SimulatorSettings.model_validate({**settings.model_dump(), "start": from_us(start_us)})


def probe_readings(shape: Shape) -> int:
    """Readings in one probe message: the shape of the phase's load."""
    return SENML_PACK if shape == "senml" else 1


def probe_ts_s(k: int, shape: Shape, base_s: int) -> int:
    """Timestamp (Unix seconds) of the first reading of probe ``k``, the one the benchmark looks for."""
    return base_s + k * probe_readings(shape)


def probe_stream(device_id: str, shape: Shape, base_s: int, count: int) -> PacketStream:
    """``count`` probe messages of a probe device (its readings one second apart, never repeated)."""
    device = Device(
        device_id=device_id,
        domain=PROBE_DOMAIN,
        district="probe",
        provenance=Provenance.OFFICIAL,
        metrics=(PROBE_METRIC,),
        shape=shape,
        time_format="epoch_s",
        sends_units=False,
        report_probability=1.0,
        scale=1.0,
        offset_s=0,
    )
    topic = telemetry_topic("city", PROBE_DOMAIN, device_id)
    n = probe_readings(shape)
    stream = PacketStream()
    for k in range(count):
        first = probe_ts_s(k, shape, base_s)
        readings = [SimReading(PROBE_METRIC, (first + j) * 1_000_000, 1000 * (k % 100)) for j in range(n)]
        stream.append(topic, render(device, shape, readings, {}))
    return stream


CHUNK: Final = 256
"""Messages per write at most."""
TICK_S: Final = 0.005
"""A paced stream is written every 5 ms (its messages due by then at once)."""


@dataclass
class Sent:
    """When publishing started and ended, and when each probe left (``time.monotonic``)."""

    first_publish: float
    last_publish: float
    probes: list[float]


def publish(
    pub: QoS1Publisher, stream: PacketStream, rate: float, probes: PacketStream, probe_rate: float
) -> Sent:
    """Send ``stream``, ``rate`` messages a second (0: as fast as the window allows), and probe ``k`` at
    ``k / probe_rate`` seconds from the start; return the send times."""
    t0 = time.monotonic()
    probe_times: list[float] = []
    sent = 0
    last = t0
    while sent < len(stream) or len(probe_times) < len(probes):
        k = len(probe_times)
        next_probe = t0 + k / probe_rate if k < len(probes) else math.inf
        now = time.monotonic()
        if now >= next_probe:
            while pub.room == 0:
                pub.read_acks(None)
            probe_times.append(time.monotonic())
            pub.send(probes, k, k + 1)
            continue
        due = len(stream) if rate <= 0 else min(len(stream), int((now - t0) * rate) + 1)
        if sent < due:
            if pub.room == 0:
                pub.read_acks(None)
                continue
            n = min(pub.room, due - sent, CHUNK)
            pub.send(stream, sent, sent + n)
            last = time.monotonic()
            sent += n
            pub.read_acks(0)
            continue
        # Paced load goes out in ticks: one write per tick instead of one per message keeps the device
        # side's CPU out of the way of the pipeline; probes keep their exact times.
        next_load = max(t0 + sent / rate, last + TICK_S) if rate > 0 and sent < len(stream) else math.inf
        pub.read_acks(max(0.0, min(next_probe, next_load) - time.monotonic()))
    return Sent(t0, max([last, *probe_times]), probe_times)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", type=Path, required=True, help="SimulatorSettings as JSON")
    parser.add_argument("--mqtt-port", type=int, required=True)
    parser.add_argument("--truth", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=0.0, help="messages/s; 0 = as fast as acks allow")
    parser.add_argument("--window", type=int, default=1000, help="unacknowledged messages at most")
    parser.add_argument("--probe-device", default="probe")
    parser.add_argument("--probe-shape", choices=("single", "senml"), default="single")
    parser.add_argument("--probe-base-s", type=int, default=0)
    parser.add_argument("--probe-rate", type=float, default=0.0, help="probe messages/s (0: none)")
    args = parser.parse_args()

    settings = SimulatorSettings.model_validate_json(args.settings.read_text(encoding="utf-8"))
    sim = Simulation(settings)
    truth = sim.new_truth()
    stream = PacketStream()
    for message in sim.messages():
        truth.record(message)
        stream.append(message.topic, message.payload)
    probes = PacketStream()
    if args.probe_rate > 0 and args.rate > 0:
        n_probes = int(len(stream) / args.rate * args.probe_rate)
        probes = probe_stream(args.probe_device, args.probe_shape, args.probe_base_s, n_probes)
    pub = QoS1Publisher("127.0.0.1", args.mqtt_port, f"bench-simpub-{os.getpid()}", args.window)
    pub.connect()
    ready = {
        "messages": truth.messages["total"],
        "malformed": truth.messages["malformed"],
        "readings": truth.readings,
        "probes": len(probes),
    }
    print(json.dumps({"ready": ready}), flush=True)
    if sys.stdin.readline().strip() != "go":
        return 2
    cpu_before = _cpu_seconds()
    sent = publish(pub, stream, args.rate, probes, args.probe_rate)
    complete = pub.wait_acked(ACK_TIMEOUT_S)
    all_acked = time.monotonic()
    pub.close()
    total = len(stream) + len(probes)
    if not complete or pub.acked != total:
        print(f"only {pub.acked} of {total} messages were acknowledged", file=sys.stderr)
        return 1
    truth.write(args.truth)
    result = {
        "first_publish": sent.first_publish,
        "last_publish": sent.last_publish,
        "all_acked": all_acked,
        "probes": sent.probes,
        "publishing_cpu_s": _cpu_seconds() - cpu_before,
        "vmhwm_kb": status_kb(os.getpid(), "VmHWM") or 0,
    }
    args.result.write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
