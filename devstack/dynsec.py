"""The dev broker's own accounts in Mosquitto's dynamic security plugin: the bridge's (and the anonymous
experiments' role with ``--insecure-mqtt``).

Devices are not created here: the API issues their credentials and tells the broker (``cred``'s
``core/dynsec.py``). This module only bootstraps, as the dynsec admin over the TLS listener, what must
exist before the bridge connects; every command is idempotent, so it runs on every start.
"""

from __future__ import annotations

import json
import queue
import secrets
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from devstack.mosquitto import DYNSEC_ADMIN
from devstack.process import ServiceError

BRIDGE_USERNAME: Final = "cityingest-bridge"
BRIDGE_ROLE: Final = "cityingest-bridge"
ANONYMOUS_ROLE: Final = "cityingest-anonymous"
ANONYMOUS_GROUP: Final = "cityingest-anonymous"
CONTROL_TOPIC: Final = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC: Final = CONTROL_TOPIC + "/response"
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
    """Send ``commands`` as the dynsec admin over TLS; their responses. Errors other than "already there"
    raise :class:`ServiceError`."""
    answers: queue.Queue[bytes] = queue.Queue()
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"cityingest-dev-admin-{secrets.token_hex(8)}",
        protocol=paho.MQTTv5,
    )
    client.username_pw_set(DYNSEC_ADMIN, admin_password)
    client.tls_set(ca_certs=str(ca_file), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    subscribed: queue.Queue[bool] = queue.Queue()
    connected: queue.Queue[str] = queue.Queue()
    client.on_connect = lambda _c, _u, _f, reason, _p: connected.put(str(reason) if reason.is_failure else "")
    client.on_message = lambda _c, _u, message: answers.put(bytes(message.payload))
    client.on_subscribe = lambda _c, _u, _mid, codes, _p: subscribed.put(all(not c.is_failure for c in codes))
    try:
        if client.connect(host, port, keepalive=30) != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise ServiceError(f"cannot connect to Mosquitto {host}:{port} as {DYNSEC_ADMIN}")
    except OSError as exc:
        raise ServiceError(f"cannot connect to Mosquitto {host}:{port} as {DYNSEC_ADMIN}: {exc}") from exc
    client.loop_start()
    try:
        refusal = connected.get(timeout=_TIMEOUT_S)
        if refusal:
            raise ServiceError(f"Mosquitto {host}:{port} refused {DYNSEC_ADMIN}: {refusal}")
        client.subscribe(RESPONSE_TOPIC, qos=1)
        if not subscribed.get(timeout=_TIMEOUT_S):
            raise ServiceError(f"Mosquitto refused {DYNSEC_ADMIN} the dynamic security responses")
        client.publish(CONTROL_TOPIC, json.dumps({"commands": list(commands)}), qos=1)
        responses: list[Command] = json.loads(answers.get(timeout=_TIMEOUT_S))["responses"]
    except queue.Empty:
        raise ServiceError(f"no answer from Mosquitto's dynamic security plugin on {host}:{port}") from None
    finally:
        client.disconnect()
        client.loop_stop()
    failed = [r for r in responses if r.get("error") and not any(h in r["error"] for h in _HARMLESS)]
    if failed:
        raise ServiceError(f"dynamic security commands failed: {failed}")
    return responses
