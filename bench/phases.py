"""The phases of the end-to-end benchmark (``bench/e2e.py``): warm-up, sustained rate with its ceilings,
latency at half rate, and the store's check against the truth after each."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.ceilings import broker_msgs_per_s, copy_rows_per_s, prepare
from bench.e2e_report import Check, Latency, Spec, Sustained
from bench.latency import ProbePoller
from bench.pipeline import DeviceProcess, Pipeline
from bench.procmem import Watched, Watcher
from bench.simpub import PROBE_METRIC, probe_readings, probe_ts_s, workload_settings
from bench.truthcheck import check_api, check_store


class Incomplete(Exception):
    """The pipeline stopped making progress, or a process died: the run cannot be measured."""


def say(text: str) -> None:
    """A progress line (the table comes at the end)."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


class Bench:
    """One run: the pipeline, the watcher and the device processes it started."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.pipe = Pipeline(
            workdir, partitions=args.partitions, consumers=args.consumers, extra_env=dict(args.env)
        )
        self.watcher = Watcher(interval_s=1.0)
        self.devices: list[DeviceProcess] = []
        self.publisher = Watched("publisher", self._device_pids, ours=True)

    def _device_pids(self) -> list[int]:
        return [pid for device in self.devices for pid in device.pids]

    async def start(self) -> None:
        """Start the pipeline and the memory watcher."""
        await self.pipe.start()
        self.pipe.watch(self.watcher)
        self.watcher.watch(self.publisher)
        self.watcher.watch(Watched("bench harness", lambda: [os.getpid()], ours=False))
        self.watcher.start()

    async def stop(self) -> None:
        """Last memory sample while everything still runs, then stop it all."""
        await self.watcher.stop()
        for device in self.devices:
            await device.kill()
        await self.pipe.stop()

    def device(self, name: str) -> DeviceProcess:
        """A new device process (not started)."""
        device = DeviceProcess(self.workdir, name)
        self.devices.append(device)
        return device

    async def wait_applied(
        self, base: tuple[int, int, float], records: int, readings: int, messages: int
    ) -> tuple[float, float | None]:
        """Poll until the rollups count ``readings`` more than at ``base`` (offsets, rollups, bridge acks);
        return when (``time.monotonic``) that was seen, and when the bridge had acknowledged all."""
        base_offsets, base_rollups, base_acked = base
        bridge_done: float | None = None
        last, last_change, next_scrape, next_rollups = -1, time.monotonic(), 0.0, 0.0
        checked = -1
        while True:
            offsets = await self.pipe.offsets()
            now = time.monotonic()
            if offsets != last:
                last, last_change = offsets, now
            # The rollups are summed when the offsets say all records are in (once per new offset
            # total), and once a second whatever the offsets say.
            if (offsets - base_offsets >= records and offsets != checked) or now >= next_rollups:
                checked = offsets
                stored = await self.pipe.rollup_readings() - base_rollups
                if stored >= readings:
                    if stored > readings:
                        raise Incomplete(f"the rollups count {stored} readings, {readings} expected")
                    if bridge_done is None:  # done since the last scrape: say so at the stored time
                        acked = (await self.pipe.bridge_stats())["cityingest_bridge_messages_acked_total"]
                        bridge_done = now if acked - base_acked >= messages else None
                    return now, bridge_done
                next_rollups = now + 1.0
            if bridge_done is None and now >= next_scrape:
                acked = (await self.pipe.bridge_stats())["cityingest_bridge_messages_acked_total"]
                if acked - base_acked >= messages:
                    bridge_done = time.monotonic()
                next_scrape = now + 0.2
            if dead := self.pipe.dead():
                raise Incomplete(f"{', '.join(dead)} died; logs in {self.pipe.logs}")
            if now - last_change > self.args.stall_s:
                raise Incomplete(
                    f"no progress for {self.args.stall_s:.0f} s: {offsets - base_offsets} of {records} "
                    f"records applied; logs in {self.pipe.logs}"
                )
            await asyncio.sleep(0.02)

    async def baseline(self) -> tuple[int, int, float]:
        """Offsets, rollup readings and bridge acknowledgements before a phase."""
        stats = await self.pipe.bridge_stats()
        acked = stats["cityingest_bridge_messages_acked_total"]
        return await self.pipe.offsets(), await self.pipe.rollup_readings(), acked

    async def check(
        self, truth: dict[str, Any], before: Counter[str], probes: tuple[str, int, int] | None
    ) -> Check:
        """The store, and the bridge's dead letters by reason, against the truth of one phase (and its
        probes); ``before`` holds the bridge's rejections by reason before the phase."""
        series, diffs = await check_store(self.pipe.dsn, truth)
        api_series, api_diffs = await check_api(self.pipe.api, self.pipe.api_key, truth, self.args.api_sample)
        diffs += api_diffs
        rejected = await self.pipe.bridge_rejections()
        rejected.subtract(before)
        expected = Counter(truth.get("dead_letters", truth["malformed"]))
        for reason in sorted(set(expected) | {r for r, n in rejected.items() if n}):
            if rejected[reason] != expected[reason]:
                diffs.append(f"dead letters {reason}: bridge {rejected[reason]}, truth {expected[reason]}")
        if probes is not None:
            device, sent, per = probes
            stored = await self.pipe.device_readings(device)
            if stored != (sent * per, sent * per):
                diffs.append(f"probe device {device}: (raw, monthly) = {stored}, {sent * per} sent")
        dead = sum(rejected.values())
        bridge = f"dead letters: {dead:,} by {len(+rejected)} reasons (truth: {expected.total():,})"
        return Check(series, api_series, diffs, bridge)

    # -- phases ----------------------------------------------------------------------------------

    async def warm_up(self) -> None:
        """A small stream through the whole pipeline first: the consumer group has its partitions, the
        bridge's producer its metadata and every connection pool its connections before any clock runs."""
        settings = workload_settings(
            "warmup", "single", devices=100, count=2_000, seed=self.args.seed, now=datetime.now(UTC)
        )
        device = self.device("warmup")
        ready = await device.start(settings, self.pipe.mqtt.port)
        base = await self.baseline()
        await device.go()
        records = ready["messages"] - ready["malformed"]
        await self.wait_applied(base, records, ready["readings"], ready["messages"])
        await device.finish(60)

    async def sustained(self, spec: Spec, count: int) -> Sustained:
        """Ceilings, then the whole stream as fast as possible, then the truth."""
        args = self.args
        settings = workload_settings(
            spec.name, spec.shape, devices=args.devices, count=count, seed=args.seed, now=datetime.now(UTC)
        )
        prepared = await asyncio.to_thread(
            prepare, spec.name, settings, args.ceiling_publishers, self.workdir
        )
        workload = prepared.workload
        say(f"{spec.label}: broker QoS 1 ceiling ({len(workload.files)} mosquitto_pub -> mosquitto_sub)")
        broker = await asyncio.to_thread(
            broker_msgs_per_s, self.pipe.mqtt.port, workload, args.ceiling_repeats
        )
        copy_rows, copy = await copy_rows_per_s(self.pipe.dsn, prepared.envelopes)
        del prepared.envelopes[:]
        say(f"{spec.label}: broker {broker:,.0f} msg/s, COPY {copy:,.0f} rows/s; generating the stream")
        device = self.device(f"sustained-{spec.name}")
        ready = await device.start(settings, self.pipe.mqtt.port, "--window", str(args.window))
        before = await self.pipe.bridge_rejections()
        base = await self.baseline()
        cpu0, t0 = self.watcher.cpu_snapshot(), time.monotonic()
        await device.go()
        say(f"{spec.label}: publishing {ready['messages']:,} messages ({ready['readings']:,} readings)")
        records = ready["messages"] - ready["malformed"]
        stored_at, bridge_at = await self.wait_applied(base, records, ready["readings"], ready["messages"])
        cpu, wall = self.watcher.cpu_snapshot(), time.monotonic() - t0
        result, truth = await device.finish(120)
        cpu = self._cpu_shares(cpu0, cpu, wall, result)
        first = float(result["first_publish"])
        say(f"{spec.label}: stored in {stored_at - first:.1f} s; checking the store against the truth")
        check = await self.check(truth, before, None)
        return Sustained(
            spec=spec,
            messages=ready["messages"],
            readings=ready["readings"],
            payload_bytes=prepared.payload_bytes,
            publish_s=float(result["all_acked"]) - first,
            bridge_s=None if bridge_at is None else bridge_at - first,
            store_s=stored_at - first,
            broker_ceiling=broker,
            copy_rows=copy_rows,
            copy_ceiling=copy,
            cpu=cpu,
            cpu_wall_s=wall,
            check=check,
        )

    async def latency(self, run: Sustained) -> Latency:
        """A paced stream at half ``run``'s rate, with probes; their publish-to-queryable latency."""
        args, spec = self.args, run.spec
        per_probe = probe_readings(spec.shape)
        offered = run.rate / 2
        per_message = run.readings / run.messages
        load = max(1.0, (offered - args.probe_rate * per_probe) / per_message)
        count = int(load * args.latency_s)
        settings = workload_settings(
            f"{spec.name}-lat", spec.shape, devices=args.devices, count=count, seed=args.seed + 1,
            now=datetime.now(UTC),
        )  # fmt: skip
        probe_device = f"probe-{spec.name}"
        base_s = int(time.time()) - 2 * 86_400
        device = self.device(f"latency-{spec.name}")
        ready = await device.start(
            settings, self.pipe.mqtt.port, "--rate", f"{load:.3f}", "--window", str(args.window),
            "--probe-rate", str(args.probe_rate), "--probe-shape", spec.shape,
            "--probe-device", probe_device, "--probe-base-s", str(base_s),
        )  # fmt: skip
        n = ready["probes"]
        targets = {probe_ts_s(k, spec.shape, base_s) * 1_000_000: k for k in range(n)}
        poller = ProbePoller(self.pipe.dsn, probe_device, PROBE_METRIC, targets, args.poll_ms / 1000)
        await poller.start()
        before = await self.pipe.bridge_rejections()
        base = await self.baseline()
        cpu0, t0 = self.watcher.cpu_snapshot(), time.monotonic()
        await device.go()
        say(f"{spec.label}: {args.latency_s:.0f} s at {offered:,.0f} readings/s with {n} probes")
        records = ready["messages"] - ready["malformed"] + n
        readings = ready["readings"] + n * per_probe
        stored_at, _ = await self.wait_applied(base, records, readings, ready["messages"] + n)
        cpu, wall = self.watcher.cpu_snapshot(), time.monotonic() - t0
        await poller.stop(within_s=10)
        result, truth = await device.finish(120)
        cpu = self._cpu_shares(cpu0, cpu, wall, result)
        sent = [float(t) for t in result["probes"]]
        latencies = [poller.seen[k] - sent[k] for k in range(n) if k in poller.seen]
        elapsed = float(result["last_publish"]) - float(result["first_publish"])
        check = await self.check(truth, before, (probe_device, n, per_probe))
        return Latency(
            spec=spec,
            offered=offered,
            readings=readings,
            achieved=readings / elapsed if elapsed > 0 else 0.0,
            drain_s=stored_at - float(result["last_publish"]),
            latencies=latencies,
            probes=n,
            interval_s=args.poll_ms / 1000,
            mean_query_s=poller.mean_query_s,
            cpu=cpu,
            cpu_wall_s=wall,
            check=check,
        )

    async def idle(self, seconds: float) -> dict[str, float]:
        """CPU shares with no traffic at all: what each process costs per second rather than per reading."""
        before, t0 = self.watcher.cpu_snapshot(), time.monotonic()
        await asyncio.sleep(seconds)
        after = self.watcher.cpu_snapshot()
        wall = time.monotonic() - t0
        return {name: (after[name] - before.get(name, 0.0)) / wall for name in after}

    def _cpu_shares(
        self, before: dict[str, float], after: dict[str, float], wall: float, result: dict[str, Any]
    ) -> dict[str, float]:
        """Per-part CPU over ``wall`` seconds, the device process's from its own account (it may have
        exited before the second snapshot); also takes note of its peak memory."""
        self.publisher.peak_kb = max(self.publisher.peak_kb, int(result["vmhwm_kb"]))
        shares = {name: (after[name] - before.get(name, 0.0)) / wall for name in after}
        shares["publisher"] = float(result["publishing_cpu_s"]) / wall
        return shares
