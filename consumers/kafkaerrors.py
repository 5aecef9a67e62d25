"""Which Kafka errors a retry can cure: aiokafka's own ``retriable``, read once here."""

from __future__ import annotations

from aiokafka.errors import KafkaError, KafkaTimeoutError


def retriable(exc: KafkaError) -> bool:
    """Whether waiting and trying again can help (Kafka or the network is down, a leader moves)."""
    # aiokafka marks a request that timed out on the client as not retriable, but it is what an
    # unreachable broker looks like to a producer waiting for metadata or acknowledgements.
    return bool(exc.retriable) or isinstance(exc, KafkaTimeoutError)
