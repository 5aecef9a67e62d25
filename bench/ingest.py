"""Throughput of one bridge process, next to the broker's own QoS 1 ceiling, measured in the same run.

Usage: ``.venv/bin/python -m bench.ingest [--messages N] [--packs N] [--publishers P]
[--dead-letter-messages N] [--no-tls]``
(behind ``make bench-ingest``).

It starts its own Mosquitto and Tansu (memory storage) on free ports, then for each workload:

1. *ceiling*: ``mosquitto_sub -q 1`` counts N messages that ``mosquitto_pub -q 1 -l`` processes publish;
   the elapsed time is the broker's QoS 1 ceiling for that payload on this machine;
2. *bridge*: the same publishers, with one ``cityingest bridge`` process subscribed instead; the clock stops
   when the bridge has acknowledged all N messages, i.e. after Kafka (acks=all) took every reading.

Workloads: single-reading JSON messages, and SenML packs of 50 readings. Targets on a 2-core machine:
10,000 single-reading messages/s and 150,000 readings/s with packs of 50. Then a sustained stream of
256 KiB messages of invalid readings (:mod:`bench.deadletters`): msg/s, dead letters written and the
bridge's peak memory against its 300 MB target.

Then TLS against plain, in the same run on one broker secured as ``cityingest dev`` secures it (dev CA,
dynamic security, the bridge's own account; :class:`Link`): the same workloads and measurements once over
the plain listener and once over TLS (publishers, the ceiling's subscriber and the bridge), and the ratio
TLS/plain of each. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import orjson

from devstack.certs import ensure_certificates
from devstack.dynsec import BRIDGE_USERNAME, anonymous_commands, bridge_commands, run_commands
from devstack.kafka import ensure_topics
from devstack.mosquitto import BrokerSecurity, MosquittoBroker
from devstack.process import ChildProcess, free_port
from devstack.tansu import TansuBroker

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "bench"
MAX_LINES_PER_PUBLISHER = 60_000  # mosquitto_pub -l at QoS 1 stops early past 65,535 lines
REJECTED = re.compile(r'^cityingest_bridge_rejected_total\{reason="(\w+)"\} ([0-9.e+]+)$', re.M)


@dataclass(frozen=True)
class Workload:
    """N messages of one payload shape, split over publishers (each publishing as its own device)."""

    name: str
    messages: int
    readings_per_message: int
    files: list[tuple[str, Path]]
    """(topic, file of newline-separated payloads) per publisher process."""


@dataclass(frozen=True)
class Link:
    """How the bench's clients reach a secured broker: its plain listener or its TLS one (with the dev CA).

    Publishers are anonymous (allowed to publish telemetry only); the bridge and the ceiling's subscriber
    log in with the bridge's account.
    """

    name: str
    port: int
    login: tuple[str, str]
    ca_file: Path | None = None

    def client_args(self, *, login: bool = False) -> list[str]:
        """mosquitto_pub/sub options for this link."""
        args = ["-p", str(self.port)]
        if self.ca_file is not None:
            args += ["--cafile", str(self.ca_file)]
        if login:
            args += ["-u", self.login[0], "-P", self.login[1]]
        return args

    def bridge_env(self) -> dict[str, str]:
        """The bridge's settings for this link."""
        env = {
            "CITYINGEST_MQTT_PORT": str(self.port),
            "CITYINGEST_MQTT_USERNAME": self.login[0],
            "CITYINGEST_MQTT_PASSWORD": self.login[1],
        }
        if self.ca_file is not None:
            env |= {"CITYINGEST_MQTT_TLS": "true", "CITYINGEST_MQTT_CA_FILE": str(self.ca_file)}
        return env


def _port_args(port: int, link: Link | None, *, login: bool = False) -> list[str]:
    return ["-p", str(port)] if link is None else link.client_args(login=login)


def single_payload(i: int) -> dict[str, object]:
    return {"metric": "water_flow", "value": float(i % 1000), "ts": 1_767_000_000 + i % 86_400}


def senml_pack(i: int, device: str, size: int) -> list[dict[str, object]]:
    base: dict[str, object] = {"bn": f"urn:dev:{device}:", "bt": 1_767_000_000 + i % 86_400, "bu": "V"}
    return [{**(base if j == 0 else {}), "n": "voltage", "v": 230.0 + j / 10, "t": j} for j in range(size)]


def make_workload(name: str, messages: int, publishers: int, pack: int, workdir: Path) -> Workload:
    """Write each publisher's payload file (one message per line)."""
    per = -(-messages // publishers)
    if per > MAX_LINES_PER_PUBLISHER:
        publishers = -(-messages // MAX_LINES_PER_PUBLISHER)
        per = -(-messages // publishers)
    files = []
    written = 0
    for p in range(publishers):
        device = f"{name}-{p}"
        path = workdir / f"{name}-{p}.lines"
        count = min(per, messages - written)
        with path.open("wb") as out:
            for i in range(written, written + count):
                doc = single_payload(i) if pack == 1 else senml_pack(i, device, pack)
                out.write(orjson.dumps(doc) + b"\n")
        written += count
        domain = "water" if pack == 1 else "power"
        files.append((f"{PREFIX}/{domain}/{device}/telemetry", path))
    return Workload(name, messages, pack, files)


def start_publishers(
    port: int, workload: Workload, link: Link | None = None
) -> list[subprocess.Popen[bytes]]:
    """One ``mosquitto_pub -q 1 -l`` process per payload file."""
    procs = []
    for topic, path in workload.files:
        with path.open("rb") as stdin:
            procs.append(
                subprocess.Popen(
                    ["mosquitto_pub", *_port_args(port, link), "-q", "1", "-t", topic, "-l"],
                    stdin=stdin,
                    stdout=subprocess.DEVNULL,
                )
            )
    return procs


def wait_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.wait() != 0:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")


def broker_ceiling(port: int, workload: Workload, link: Link | None = None) -> float:
    """Messages/s from mosquitto_pub to mosquitto_sub at QoS 1 (both C clients)."""
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            *_port_args(port, link, login=True),
            "-q",
            "1",
            "-t",
            f"{PREFIX}/+/+/telemetry",
            "-C",
            str(workload.messages),
        ],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # let it subscribe
    start = time.perf_counter()
    wait_all(start_publishers(port, workload, link))
    if sub.wait(timeout=600) != 0:
        raise RuntimeError("mosquitto_sub failed")
    return workload.messages / (time.perf_counter() - start)


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(r"^(cityingest_bridge_\w+) ([0-9.e+]+)$", text, re.M)}


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape_rejected(port: int) -> Counter[str]:
    """The bridge's rejected payloads and readings by reason code."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return Counter({m[1]: int(float(m[2])) for m in REJECTED.finditer(text)})


def start_bridge(
    mqtt_port: int, kafka: str, name: str, workdir: Path, link: Link | None = None
) -> tuple[ChildProcess, int]:
    """A bridge process subscribed to the bench's topics, ready; and its HTTP port. It is started as compose
    and Kubernetes run it, ``cityingest bridge`` (here ``python -m cli bridge``) with its HTTP flags."""
    http_port = free_port()
    env = {
        **os.environ,
        "CITYINGEST_MQTT_PORT": str(mqtt_port),
        "CITYINGEST_MQTT_HOST": "127.0.0.1",
        "CITYINGEST_MQTT_TOPIC_PREFIX": PREFIX,
        "CITYINGEST_KAFKA_BOOTSTRAP": kafka,
        "CITYINGEST_KAFKA_IDEMPOTENCE": "false",
        "CITYINGEST_CLIENT_ID": f"bench-{name}",
        "CITYINGEST_LOG_LEVEL": "WARNING",
        **(link.bridge_env() if link is not None else {}),
    }
    argv = [sys.executable, "-m", "cli", "bridge", "--http-host", "127.0.0.1", "--http-port", str(http_port)]
    bridge = ChildProcess("bridge", argv, log_path=workdir / f"bridge-{name}.log", env=env, cwd=ROOT)
    bridge.start()
    deadline = time.monotonic() + 30
    while not ready(http_port):
        if time.monotonic() > deadline or not bridge.alive():
            bridge.stop()
            raise RuntimeError(f"the bridge did not become ready; see {bridge.log_path}")
        time.sleep(0.1)
    return bridge, http_port


def bridge_rate(
    mqtt_port: int, kafka: str, workload: Workload, workdir: Path, link: Link | None = None
) -> tuple[float, float, float]:
    """(messages/s, readings/s, bridge CPU share) of one bridge process draining the workload."""
    name = workload.name if link is None else f"{workload.name}-{link.name}"
    bridge, http_port = start_bridge(mqtt_port, kafka, name, workdir, link)
    try:
        assert bridge.pid is not None
        cpu0 = cpu_seconds(bridge.pid)
        start = time.perf_counter()
        wait_all(start_publishers(mqtt_port, workload, link))
        while (
            acked := scrape(http_port).get("cityingest_bridge_messages_acked_total", 0)
        ) < workload.messages:
            if time.perf_counter() - start > 600:
                raise RuntimeError(f"only {acked:.0f} of {workload.messages} messages acknowledged")
            time.sleep(0.02)
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(bridge.pid) - cpu0
        stats = scrape(http_port)
        readings = stats["cityingest_bridge_readings_forwarded_total"]
        if readings != workload.messages * workload.readings_per_message:
            raise RuntimeError(f"forwarded {readings:.0f} readings, expected more")
        return workload.messages / elapsed, readings / elapsed, cpu / elapsed
    finally:
        bridge.stop()


def secured_links(workdir: Path) -> tuple[MosquittoBroker, Link, Link]:
    """A broker secured as ``cityingest dev`` secures it, with a plain listener too; its two links."""
    certs = ensure_certificates(workdir / "ca")
    admin, bridge = os.urandom(16).hex(), os.urandom(16).hex()
    plain_port = free_port()
    security = BrokerSecurity(certs.ca_cert, certs.server_cert, certs.server_key, plain_port=plain_port)
    broker = MosquittoBroker(workdir / "mosquitto-secured", free_port(), security=security)
    broker.init_dynsec(admin)
    broker.start()
    try:
        commands = bridge_commands(PREFIX, bridge) + anonymous_commands(PREFIX)
        run_commands(broker.host, broker.port, certs.ca_cert, admin, commands)
    except BaseException:
        broker.stop()
        raise
    login = (BRIDGE_USERNAME, bridge)
    return broker, Link("plain", plain_port, login), Link("tls", broker.port, login, certs.ca_cert)


def tls_report(kafka: str, workloads: list[Workload], workdir: Path) -> None:
    """Each workload over the plain listener and over TLS on one secured broker, and TLS/plain."""
    broker, plain, tls = secured_links(workdir)
    try:
        print("TLS against plain, one secured broker (dynamic security; the bridge with its account)")
        print(
            f"{'workload':<10} {'link':<5} {'ceiling msg/s':>14} {'bridge msg/s':>13} {'readings/s':>11} "
            f"{'of ceiling':>10} {'bridge CPU':>10}"
        )
        results: dict[tuple[str, str], tuple[float, float, float]] = {}
        for workload in workloads:
            for link in (plain, tls):
                ceiling = broker_ceiling(link.port, workload, link)
                msgs, readings, cpu = bridge_rate(link.port, kafka, workload, workdir, link)
                results[workload.name, link.name] = (ceiling, msgs, cpu)
                print(
                    f"{workload.name:<10} {link.name:<5} {ceiling:>14,.0f} {msgs:>13,.0f} {readings:>11,.0f} "
                    f"{msgs / ceiling:>10.0%} {cpu:>10.0%}"
                )
        for workload in workloads:
            (c_plain, m_plain, cpu_plain), (c_tls, m_tls, cpu_tls) = (
                results[workload.name, "plain"],
                results[workload.name, "tls"],
            )
            print(
                f"{workload.name:<10} TLS/plain: ceiling {c_tls / c_plain:.2f}, "
                f"bridge {m_tls / m_plain:.2f}, "
                f"bridge CPU per message {(cpu_tls / m_tls) / (cpu_plain / m_plain):.2f}"
            )
    finally:
        broker.stop()


async def make_topics(bootstrap: str) -> None:
    await ensure_topics(bootstrap, {"readings": 6, "readings.dlq": 1})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=100_000, help="single-reading messages")
    parser.add_argument("--packs", type=int, default=20_000, help="SenML packs of 50 readings")
    parser.add_argument("--publishers", type=int, default=2, help="mosquitto_pub processes per workload")
    parser.add_argument(
        "--dead-letter-messages", type=int, default=1_000, help="256 KiB messages of invalid readings"
    )
    parser.add_argument(
        "--no-tls", action="store_true", help="leave out the TLS/plain comparison on a secured broker"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cityingest-bench-") as tmp:
        workdir = Path(tmp)
        mosquitto = MosquittoBroker(workdir / "mosquitto", free_port())
        tansu = TansuBroker(workdir, free_port())
        mosquitto.start()
        tansu.start()
        try:
            asyncio.run(make_topics(tansu.bootstrap))
            workloads = [
                make_workload("single", args.messages, args.publishers, 1, workdir),
                make_workload("senml50", args.packs, args.publishers, 50, workdir),
            ]
            print(f"cityingest bridge benchmark: {os.cpu_count()} CPUs, one bridge process, Tansu (memory)")
            print(
                f"{'workload':<10} {'messages':>9} {'ceiling msg/s':>14} {'bridge msg/s':>13} "
                f"{'readings/s':>11} {'of ceiling':>10} {'bridge CPU':>10}"
            )
            for workload in workloads:
                ceiling = broker_ceiling(mosquitto.port, workload)
                msgs, readings, cpu = bridge_rate(mosquitto.port, tansu.bootstrap, workload, workdir)
                print(
                    f"{workload.name:<10} {workload.messages:>9} {ceiling:>14,.0f} {msgs:>13,.0f} "
                    f"{readings:>11,.0f} {msgs / ceiling:>10.0%} {cpu:>10.0%}"
                )
            if args.dead_letter_messages:
                # Imported here: bench.deadletters imports this module (and bench.procmem, which does too).
                from bench.deadletters import report

                report(mosquitto.port, tansu.bootstrap, args.dead_letter_messages, args.publishers, workdir)
            if not args.no_tls:
                tls_report(tansu.bootstrap, workloads, workdir)
        finally:
            tansu.stop()
            mosquitto.stop()


if __name__ == "__main__":
    main()
