"""The dev broker's own accounts in Mosquitto's dynamic security plugin: the bridge's (and the anonymous
experiments' role with ``--insecure-mqtt``).

Devices are not created here: the API issues their credentials and tells the broker (``cred``'s
``core/dynsec.py``). This module only bootstraps, as the dynsec admin over the TLS listener, what must
exist before the bridge connects; every command is idempotent, so it runs on every start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

from core.dynsec import Dynsec
from core.errors import DynsecRefused, DynsecUnavailable
from core.settings import MqttSettings
from devstack.mosquitto import DYNSEC_ADMIN
from devstack.process import ServiceError

BRIDGE_USERNAME: Final = "cityingest-bridge"
BRIDGE_ROLE: Final = "cityingest-bridge"
ANONYMOUS_ROLE: Final = "cityingest-anonymous"
ANONYMOUS_GROUP: Final = "cityingest-anonymous"
DEFAULT_ACL_ACCESS: Final = (
    ("publishClientSend", False),
    ("publishClientReceive", True),
    ("subscribe", False),
    ("unsubscribe", True),
)
"""What a client may do that no role of its allows or denies: receive (what it subscribed to) only."""
_HARMLESS: Final = ("already exists", "already in", "already has")
"""Errors that mean the command's result is already in place (the bootstrap runs on every start)."""
_TIMEOUT_S: Final = 15.0

Command = dict[str, Any]


def bridge_commands(prefix: str, password: str) -> list[Command]:
    """The bridge's role (subscribe to device topics and to the uptime its health check reads) and client."""
    # Mosquitto 2.0 checks a shared subscription's whole filter, $share/<group>/ included.
    acls = [
        (f"{prefix}/#", "subscribePattern"),
        (f"$share/+/{prefix}/#", "subscribePattern"),
        ("$SYS/broker/uptime", "subscribePattern"),
    ]
    return [
        {
            "command": "setDefaultACLAccess",
            "acls": [{"acltype": t, "allow": a} for t, a in DEFAULT_ACL_ACCESS],
        },
        {"command": "createRole", "rolename": BRIDGE_ROLE, "textname": "cityingest bridge"},
        *(
            {"command": "addRoleACL", "rolename": BRIDGE_ROLE, "acltype": kind, "topic": topic, "allow": True}
            for topic, kind in acls
        ),
        {
            "command": "createClient",
            "username": BRIDGE_USERNAME,
            "password": password,
            "textname": "cityingest bridge",
            "roles": [{"rolename": BRIDGE_ROLE}],
        },
        # The client may exist from an earlier run whose password file was lost: the file is the truth.
        {"command": "setClientPassword", "username": BRIDGE_USERNAME, "password": password},
    ]


def anonymous_commands(prefix: str) -> list[Command]:
    """``--insecure-mqtt``: anonymous clients may publish device telemetry (nothing else, no subscribing)."""
    return [
        {"command": "createRole", "rolename": ANONYMOUS_ROLE, "textname": "cityingest dev --insecure-mqtt"},
        {
            "command": "addRoleACL",
            "rolename": ANONYMOUS_ROLE,
            "acltype": "publishClientSend",
            "topic": f"{prefix}/+/+/telemetry",
            "allow": True,
        },
        {"command": "createGroup", "groupname": ANONYMOUS_GROUP},
        {"command": "addGroupRole", "groupname": ANONYMOUS_GROUP, "rolename": ANONYMOUS_ROLE},
        {"command": "setAnonymousGroup", "groupname": ANONYMOUS_GROUP},
    ]


def run_commands(
    host: str, port: int, ca_file: Path, admin_password: str, commands: Sequence[Command]
) -> list[Command]:
    """Send ``commands`` as the dynsec admin over TLS (the API's own client, :class:`core.dynsec.Dynsec`);
    their responses. Errors other than "already there" raise :class:`ServiceError`.

    Synchronous, for the dev stack's start-up: it runs on a loop of its own in a worker thread, so it
    works whether or not the caller's thread runs an event loop.
    """
    settings = MqttSettings(mqtt_host=host, mqtt_port=port, mqtt_tls=True, mqtt_ca_file=str(ca_file))

    async def send() -> list[Command]:
        async with Dynsec(settings, DYNSEC_ADMIN, admin_password, timeout_s=_TIMEOUT_S) as admin:
            await admin.wait_connected(_TIMEOUT_S)
            responses: list[Command] = []
            for command in commands:  # one at a time: a harmless refusal must not stop the rest
                try:
                    responses += await admin.execute([command])
                except DynsecRefused as exc:
                    if not any(h in str(exc) for h in _HARMLESS):
                        raise ServiceError(f"dynamic security commands failed: {exc}") from exc
                    responses.append({"command": command["command"], "error": str(exc)})
            return responses

    try:
        with ThreadPoolExecutor(1, thread_name_prefix="dynsec-admin") as worker:
            return worker.submit(asyncio.run, send()).result()
    except DynsecUnavailable as exc:
        raise ServiceError(
            f"Mosquitto {host}:{port} did not take {DYNSEC_ADMIN}'s dynamic security commands: {exc}"
        ) from exc
