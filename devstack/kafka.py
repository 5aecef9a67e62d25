"""Kafka topic administration used by the dev stack and the tests (production creates topics at deploy)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from devstack.process import ServiceError

log = logging.getLogger(__name__)


async def ensure_topics(bootstrap: str, partitions: dict[str, int], within_s: float = 30.0) -> None:
    """Create each topic with its partition count unless it exists already."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(within_s * 1000))
    try:
        async with asyncio.timeout(within_s):
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [NewTopic(name, n, 1) for name, n in partitions.items() if name not in existing]
            if missing:
                # Another process may create a topic between our list and our create.
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(missing)
                log.info("created topics %s", ", ".join(t.name for t in missing))
    except (TimeoutError, KafkaConnectionError) as exc:
        raise ServiceError(f"cannot create Kafka topics on {bootstrap}: {exc!r}") from exc
    finally:
        await admin.close()
