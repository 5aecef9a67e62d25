"""Gather one batch of records from the fetcher: bounded by records, bytes of values and time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer

from consumers.batch import KafkaRecord
from consumers.settings import ConsumerSettings


class BatchFetcher:
    """Up to ``batch_max_records`` records and about ``batch_max_bytes`` of values per batch, waiting at
    most ``batch_max_wait_ms`` for them."""

    def __init__(self, settings: ConsumerSettings, generation: Callable[[], int]) -> None:
        self.settings = settings
        self._generation = generation
        self._record_bytes = 256.0
        """Recent mean size of a record's value, to ask the fetcher for about a batch's bytes."""

    async def fetch(self, kafka: AIOKafkaConsumer) -> list[KafkaRecord]:
        """The next batch (possibly empty once the wait is over)."""
        loop = asyncio.get_running_loop()
        limit = self.settings.batch_max_records
        byte_limit = self.settings.batch_max_bytes
        deadline = loop.time() + self.settings.batch_max_wait_ms / 1000
        out: list[KafkaRecord] = []
        size = 0
        while True:
            remaining = deadline - loop.time()
            generation = self._generation()
            # Ask for as many records as the bytes left should hold at the sizes seen lately, so one
            # call overshoots the byte budget by little even when the fetcher holds far more.
            wanted = min(limit - len(out), max(1, int((byte_limit - size) / self._record_bytes)))
            data = await kafka.getmany(timeout_ms=max(0, int(remaining * 1000)), max_records=wanted)
            if self._generation() != generation:
                # Partitions were assigned and sought to the stored offsets meanwhile: what was
                # gathered before came from the positions the seeks replaced (e.g. the reset to the
                # earliest offset before the stored ones were read); applying it would apply later
                # records before earlier ones. The fetcher delivers from the new positions on.
                out.clear()
                size = 0
            got = got_bytes = 0
            for recs in data.values():
                out.extend(recs)
                got += len(recs)
                got_bytes += sum(len(r.value) for r in recs if r.value is not None)
            if got:
                self._record_bytes = max(1.0, 0.5 * self._record_bytes + 0.5 * got_bytes / got)
            size += got_bytes
            if len(out) >= limit or size >= byte_limit or remaining <= 0:
                return out
