"""The consumer's clients, configured from its settings: the store's pool, the group member, the producer."""

from __future__ import annotations

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from consumers.settings import ConsumerSettings


async def create_store_pool(s: ConsumerSettings) -> asyncpg.Pool:
    """Connections to the store: one per parallel shard and one for offsets, pings and retention."""
    return await asyncpg.create_pool(
        s.database_url,
        min_size=0,
        max_size=s.db_pool_size + 1,
        command_timeout=300,
        # The batch statement's best plan depends on the batch; a cached generic plan is several times
        # slower.
        server_settings={
            "plan_cache_mode": "force_custom_plan",
            "application_name": f"cityingest-consumer {s.consumer_id}"[:63],
        },
    )


def group_member(s: ConsumerSettings) -> AIOKafkaConsumer:
    """The consumer group member (not started); the store, not Kafka, holds the offsets."""
    return AIOKafkaConsumer(
        bootstrap_servers=s.kafka_bootstrap,
        group_id=s.group_id,
        client_id=s.consumer_id,
        enable_auto_commit=False,
        auto_offset_reset=s.auto_offset_reset,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        session_timeout_ms=s.kafka_session_timeout_ms,
        heartbeat_interval_ms=max(100, s.kafka_session_timeout_ms // 5),
    )


def dead_letter_producer(s: ConsumerSettings) -> AIOKafkaProducer:
    """The producer of dead letters (not started)."""
    return AIOKafkaProducer(
        bootstrap_servers=s.kafka_bootstrap,
        client_id=f"{s.consumer_id}-dlq",
        acks="all",
        enable_idempotence=s.kafka_idempotence,
    )
