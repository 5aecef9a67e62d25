"""The MQTT -> Kafka bridge: validates device payloads, dead-letters bad ones, loses no acknowledged one.

Run it with ``cityingest bridge`` (or ``python -m ingest``); embed it with :class:`ingest.bridge.Bridge`.
The device contract is in :mod:`ingest.parse` and :mod:`ingest.senml` (and ``docs/devices.md``).
"""

from __future__ import annotations

from ingest.bridge import Bridge, serve
from ingest.settings import BridgeSettings

__all__ = ["Bridge", "BridgeSettings", "serve"]
