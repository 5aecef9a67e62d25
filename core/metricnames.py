"""Names of the Prometheus counters that one component exposes and another reads (the API's overview).

Counter families are named here without the ``_total`` suffix Prometheus adds to their samples; use
:func:`sample_name` for what appears in the text exposition.
"""

from __future__ import annotations

from typing import Final

BRIDGE_PREFIX: Final = "cityingest_bridge"
CONSUMER_PREFIX: Final = "cityingest_consumer"

BRIDGE_MESSAGES_RECEIVED: Final = f"{BRIDGE_PREFIX}_messages_received"
BRIDGE_READINGS_FORWARDED: Final = f"{BRIDGE_PREFIX}_readings_forwarded"
BRIDGE_DEAD_LETTERS: Final = f"{BRIDGE_PREFIX}_dead_letters"
BRIDGE_REJECTED: Final = f"{BRIDGE_PREFIX}_rejected"
"""Labelled by ``reason``: rejected payloads and readings."""

CONSUMER_READINGS: Final = f"{CONSUMER_PREFIX}_readings"
CONSUMER_READINGS_STORED: Final = f"{CONSUMER_PREFIX}_readings_stored"
CONSUMER_DEAD_LETTERS: Final = f"{CONSUMER_PREFIX}_dead_letters"
"""Labelled by ``reason``: records (or readings) the consumer dead-lettered."""


def sample_name(counter: str) -> str:
    """The sample name of a counter family in the text exposition (``<family>_total``)."""
    return f"{counter}_total"
