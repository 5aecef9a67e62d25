"""The message stream: the city's readings tick by tick, shaped into payloads, with faults injected.

Pure apart from reading the wall clock when no ``start`` is given: with a seed and a start, the
sequence of messages is the same byte for byte on every run.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import secrets
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Final

from core.catalogue import Catalogue, load_catalogue
from core.readings import to_us
from core.topics import telemetry_topic
from simulator.city import ValueModel, build_city
from simulator.malformed import MalformedPayloads
from simulator.model import Device, Message, SimReading
from simulator.payloads import catalogue_units, render
from simulator.settings import SimulatorSettings
from simulator.truth import Truth
from simulator.units import assign_units

LATE_TICKS: Final = (2, 20)
"""A late message is held back for this many ticks (inclusive range)."""
REORDER_WINDOW: Final = 16
"""An out-of-order message is overtaken by up to this many following messages."""
RECENT: Final = 64
"""Duplicates and malformed payloads are built from the last this many messages."""
DEFAULT_HISTORY_S: Final = 86_400
"""Without a message budget, the simulation starts this long ago and then keeps pace with the clock."""


def expected_messages_per_tick(settings: SimulatorSettings, devices: Sequence[Device]) -> float:
    """How many messages one tick produces on average, faults included."""
    per_tick = 0.0
    for device in devices:
        readings = len(device.metrics) * device.report_probability
        per_tick += readings if device.shape == "single" else readings / settings.batch_size
    return per_tick * (1 + settings.duplicate_rate + settings.malformed_rate)


def resolve_start_us(settings: SimulatorSettings, devices: Sequence[Device], now: datetime) -> int:
    """The simulated time of the first tick.

    Given ``start`` wins. Live mode starts one tick ago. Otherwise the run is placed in the past so
    that the expected message budget (``count``, or ``rate * duration_s``) ends around ``now``: the
    bridge rejects readings more than 5 minutes in the future.
    """
    if settings.start is not None:
        return to_us(settings.start)
    step = settings.time_step_s
    now_s = int(now.timestamp())
    if settings.live:
        return (now_s - step) * 1_000_000
    budget: float | None = settings.count
    if budget is None and settings.rate > 0 and settings.duration_s is not None:
        budget = settings.rate * settings.duration_s
    if budget is None:
        ticks = math.ceil(DEFAULT_HISTORY_S / step)
    else:
        per_tick = max(expected_messages_per_tick(settings, devices), 1e-9)
        ticks = math.ceil(budget / per_tick * 1.1) + LATE_TICKS[1] + 1
    # Aligned on the step, so runs started within the same step share their timestamps.
    return (now_s - ticks * step) // step * step * 1_000_000


class Simulation:
    """One simulated city; iterate :meth:`messages` for its message stream."""

    def __init__(
        self,
        settings: SimulatorSettings,
        *,
        catalogue: Catalogue | None = None,
        now: datetime | None = None,
    ) -> None:
        self.settings = settings
        self.seed = settings.seed if settings.seed is not None else secrets.randbelow(2**31)
        self.catalogue = catalogue if catalogue is not None else load_catalogue(settings.catalogue_file)
        city = build_city(settings, self.catalogue, random.Random(f"{self.seed}:city"))  # noqa: S311 - a simulation, not crypto
        # A random stream of their own: the same seed lays out the same city whatever the unit share.
        units_rng = random.Random(f"{self.seed}:units")  # noqa: S311 - a simulation, not crypto
        share = settings.non_canonical_unit_share
        self.devices: tuple[Device, ...] = tuple(assign_units(city, share, self.catalogue, units_rng))
        self.start_us = resolve_start_us(settings, self.devices, now or datetime.now(UTC))
        self.units = catalogue_units(self.catalogue)

    def new_truth(self) -> Truth:
        """An empty truth for this city: ``record`` each message that reached the broker."""
        return Truth(devices=self.devices, seed=self.seed, start_us=self.start_us)

    def messages(self) -> Iterator[Message]:
        """The messages in publishing order; ends after ``count`` messages, else never."""
        stream = _Stream(self)
        if self.settings.count is not None:
            return itertools.islice(stream.run(), self.settings.count)
        return stream.run()


def generate(
    settings: SimulatorSettings, *, catalogue: Catalogue | None = None, now: datetime | None = None
) -> Iterator[Message]:
    """The simulator's messages (topic, payload and what they carry) without publishing them."""
    return Simulation(settings, catalogue=catalogue, now=now).messages()


class _Stream:
    """The state of one pass over the message stream."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.settings = sim.settings
        self.rng = random.Random(f"{sim.seed}:traffic")  # noqa: S311 - a simulation, not crypto
        self.model = ValueModel(sim.settings, sim.catalogue, sim.devices)
        self.by_id = {d.device_id: d for d in sim.devices}
        self.seq = 0
        self.order = itertools.count()
        self.clock_us = sim.start_us
        self.late: list[tuple[int, int, Message]] = []
        self.reorder: list[tuple[int, int, Message]] = []
        self.recent: deque[Message] = deque(maxlen=RECENT)
        self.malformed = MalformedPayloads(
            sim.catalogue,
            prefix=sim.settings.mqtt_topic_prefix,
            max_payload_bytes=sim.settings.max_payload_bytes,
        )

    def run(self) -> Iterator[Message]:
        step_us = self.settings.time_step_s * 1_000_000
        buffers: dict[str, list[SimReading]] = {d.device_id: [] for d in self.sim.devices}
        # Within a step, in the order of their reporting second: readings come out in time order, so a
        # live run (which waits for the wall clock to reach each reading) publishes evenly over the
        # step instead of in one burst at its end.
        devices = sorted(self.sim.devices, key=lambda d: (d.offset_s, d.device_id))
        for tick in itertools.count():
            tick_us = self.sim.start_us + tick * step_us
            while self.late and self.late[0][0] <= tick:
                yield from self._emit(heapq.heappop(self.late)[2])
            for device in devices:
                if device.report_probability < 1 and self.rng.random() >= device.report_probability:
                    continue
                ts_us = tick_us + device.offset_s * 1_000_000
                self.clock_us = max(self.clock_us, ts_us)
                readings = self.model.readings(device, ts_us, self.rng)
                if device.shape == "single":
                    groups = [[r] for r in readings]
                else:
                    buffer = buffers[device.device_id]
                    buffer.extend(readings)
                    size = self.settings.batch_size
                    groups = [buffer[i : i + size] for i in range(0, len(buffer) - size + 1, size)]
                    del buffer[: len(groups) * size]
                for group in groups:
                    yield from self._route(self._message(device, group), tick)
            if not self.sim.devices:
                return

    def _message(self, device: Device, readings: list[SimReading]) -> Message:
        return Message(
            seq=-1,
            topic=telemetry_topic(self.settings.mqtt_topic_prefix, device.domain, device.device_id),
            payload=render(device, device.shape, readings, self.sim.units),
            device_id=device.device_id,
            sim_time_us=0,
            shape=device.shape,
            readings=tuple(readings),
        )

    def _route(self, message: Message, tick: int) -> Iterator[Message]:
        draw = self.rng.random()
        if draw < self.settings.late_rate:
            release = tick + self.rng.randint(*LATE_TICKS)
            heapq.heappush(self.late, (release, next(self.order), replace(message, late=True)))
        elif draw < self.settings.late_rate + self.settings.out_of_order_rate:
            release = self.seq + self.rng.randint(1, REORDER_WINDOW)
            heapq.heappush(self.reorder, (release, next(self.order), replace(message, reordered=True)))
        else:
            yield from self._emit(message)

    def _emit(self, message: Message) -> Iterator[Message]:
        pending = [message]
        while pending:
            current = pending.pop()
            latest = max((r.ts_us for r in current.readings), default=self.clock_us)
            self.clock_us = max(self.clock_us, latest)
            out = replace(current, seq=self.seq, sim_time_us=self.clock_us)
            self.seq += 1
            yield out
            if out.malformed is None and out.duplicate_of is None:
                self.recent.append(out)
            else:
                continue
            if self.rng.random() < self.settings.duplicate_rate:
                original = self.rng.choice(self.recent)
                pending.append(replace(original, duplicate_of=original.seq, late=False, reordered=False))
            if self.rng.random() < self.settings.malformed_rate:
                pending.append(self._malformed())
            while self.reorder and self.reorder[0][0] <= self.seq:
                pending.append(heapq.heappop(self.reorder)[2])

    def _malformed(self) -> Message:
        base = self.rng.choice(self.recent)
        device = self.by_id[base.device_id]
        other = self.rng.choice(self.sim.devices)
        if other.device_id == device.device_id:
            other = replace(device, device_id=f"{device.device_id}-other")
        reason = self.rng.choice(self.settings.malformed_reasons)
        topic, payload = self.malformed.build(reason, device, other, base.readings[0], self.rng)
        return Message(
            seq=-1,
            topic=topic,
            payload=payload,
            device_id=device.device_id,
            sim_time_us=0,
            malformed=reason.value,
        )
