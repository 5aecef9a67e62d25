"""The demo device ``cityingest dev`` prints a ready ``mosquitto_pub`` command for.

It is registered and given a credential through the API, exactly as a city's device team would
(``PUT /v1/devices/{id}``, then ``POST /v1/devices/{id}/credentials``); each start issues a new
password, which makes the previous one stop working.
"""

from __future__ import annotations

import json
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx

log = logging.getLogger(__name__)

DEMO_DEVICE: Final = "demo-meter-1"
DEMO_DOMAIN: Final = "water"
DEMO_PAYLOAD: Final = json.dumps({"metric": "water_flow", "value": 12.5}, separators=(", ", ": "))


@dataclass(frozen=True)
class DemoDevice:
    """A device credential as the API issued it, and where to use it."""

    device_id: str
    client_id: str
    username: str
    password: str
    topic: str
    ca_file: Path
    port: int

    def mosquitto_pub(self, host: str) -> str:
        """A shell command that publishes one reading with this credential over TLS (QoS 1)."""
        argv = ["mosquitto_pub", "-h", host, "-p", str(self.port), "--cafile", str(self.ca_file)]
        argv += ["-u", self.username, "-P", self.password, "-i", self.client_id]
        argv += ["-t", self.topic, "-q", "1", "-m", DEMO_PAYLOAD]
        return shlex.join(argv)


async def demo_device(api: str, api_key: str, ca_file: Path, port: int) -> DemoDevice | str:
    """Register the demo device and issue it a credential through the API; why not, if the API cannot."""
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=api, headers=headers, timeout=30) as client:
        try:
            registered = await client.put(f"/v1/devices/{DEMO_DEVICE}", json={"domain": DEMO_DOMAIN})
            if registered.status_code >= 300:
                return f"registering {DEMO_DEVICE} answered {registered.status_code}: {registered.text}"
            issued = await client.post(f"/v1/devices/{DEMO_DEVICE}/credentials")
        except httpx.HTTPError as exc:
            return f"the API did not answer: {exc!r}"
    if issued.status_code != 201:
        return f"POST /v1/devices/{DEMO_DEVICE}/credentials answered {issued.status_code}: {issued.text}"
    doc = issued.json()
    return DemoDevice(
        device_id=doc["device_id"],
        client_id=doc["client_id"],
        username=doc["username"],
        password=doc["password"],
        topic=doc["topic"],
        ca_file=ca_file,
        port=port,
    )
