"""A test-local Mosquitto with the dynamic security plugin, and a blocking MQTT 5 device client.

Shared by the API's credentials tests and the simulator's: the broker is set up as the contract of
issue #16 says (admin from ``mosquitto_ctrl dynsec init``, a default ACL denying publish and subscribe,
a ``cityingest-bridge`` role that may subscribe under the prefix).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from devstack.mosquitto import MOSQUITTO
from devstack.process import ChildProcess, chown_tree, free_port, service_user

HOST: Final = "127.0.0.1"
PLUGIN: Final = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
MOSQUITTO_CTRL: Final = shutil.which("mosquitto_ctrl") or "/usr/bin/mosquitto_ctrl"
ADMIN: Final = "cityingest-admin"
WAIT_S: Final = 10.0
DEFAULT_ACL: Final = {
    "publishClientSend": False,
    "publishClientReceive": True,
    "subscribe": False,
    "unsubscribe": True,
}


@dataclass
class DynsecBroker:
    """Mosquitto on ``port`` with dynamic security in ``state_dir/dynamic-security.json``."""

    state_dir: Path
    port: int = field(default_factory=free_port)
    admin_password: str = field(default_factory=lambda: uuid.uuid4().hex)
    bridge_password: str = field(default_factory=lambda: uuid.uuid4().hex)
    _proc: ChildProcess | None = None

    @property
    def json_file(self) -> Path:
        """The plugin's state file."""
        return self.state_dir / "dynamic-security.json"

    def init(self, prefix: str) -> None:
        """A fresh state file: the admin, the default ACL and the bridge's role (no bridge password yet)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.json_file.unlink(missing_ok=True)
        subprocess.run(
            [MOSQUITTO_CTRL, "dynsec", "init", str(self.json_file), ADMIN, self.admin_password],
            check=True,
            capture_output=True,
        )
        doc = json.loads(self.json_file.read_text(encoding="utf-8"))
        doc["defaultACLAccess"] = DEFAULT_ACL
        doc["roles"].append(
            {
                "rolename": "cityingest-bridge",
                "acls": [
                    {"acltype": "subscribePattern", "topic": f"{prefix}/#", "allow": True},
                    # Mosquitto 2.0.11 checks a shared subscription against its full $share/... filter.
                    {"acltype": "subscribePattern", "topic": f"$share/+/{prefix}/#", "allow": True},
                    {"acltype": "subscribePattern", "topic": "$SYS/broker/uptime", "allow": True},
                ],
            }
        )
        self.json_file.write_text(json.dumps(doc), encoding="utf-8")

    def start(self) -> None:
        """Start the broker on the current state file."""
        conf = self.state_dir / "mosquitto.conf"
        conf.write_text(
            "\n".join(
                [
                    "per_listener_settings false",
                    f"listener {self.port} {HOST}",
                    "allow_anonymous false",
                    f"plugin {PLUGIN}",
                    f"plugin_opt_config_file {self.json_file}",
                    "persistence false",
                    "max_queued_messages 1000",
                    "log_dest stdout",
                    "connection_messages true",
                    "",
                ]
            ),
            encoding="utf-8",
        )
        user = service_user("mosquitto")
        chown_tree(self.state_dir, user)
        self._proc = ChildProcess(
            "mosquitto-dynsec", [MOSQUITTO, "-c", str(conf)], log_path=self.state_dir / "log", user=user
        )
        self._proc.start_listening(HOST, self.port, 30)

    def kill(self) -> None:
        """kill -9 the broker."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait_stopped()
            self._proc = None

    def stop(self) -> None:
        """Stop the broker. Idempotent."""
        if self._proc is not None:
            self._proc.stop(signal.SIGTERM, 20)
            self._proc = None

    def add_bridge_account(self) -> None:
        """The ``cityingest-bridge`` client (with its role), through mosquitto_ctrl."""
        for args in (
            ["createClient", "cityingest-bridge", "-p", self.bridge_password],
            ["addClientRole", "cityingest-bridge", "cityingest-bridge"],
        ):
            subprocess.run(
                [
                    MOSQUITTO_CTRL,
                    "-h",
                    HOST,
                    "-p",
                    str(self.port),
                    "-u",
                    ADMIN,
                    "-P",
                    self.admin_password,
                    "dynsec",
                    *args,
                ],
                check=True,
                capture_output=True,
            )

    def log_text(self) -> str:
        """The broker's log so far."""
        path = self.state_dir / "log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


class MqttClient:
    """A blocking MQTT 5 client on paho's network thread: connect, publish and subscribe, with results."""

    def __init__(self, port: int, username: str | None, password: str | None, client_id: str) -> None:
        self.connack: ReasonCode | None = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.messages: list[paho.MQTTMessage] = []
        self._acks: dict[int, ReasonCode] = {}
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._done = threading.Condition()
        self._port = port
        self._paho = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        if username is not None:
            self._paho.username_pw_set(username, password)
        self._paho.on_connect = self._on_connect
        self._paho.on_disconnect = self._on_disconnect
        self._paho.on_publish = self._on_publish
        self._paho.on_subscribe = self._on_subscribe
        self._paho.on_message = lambda _c, _u, m: self.messages.append(m)

    def connect(self, *, clean_start: bool = True, session_expiry_s: int = 0) -> ReasonCode:
        """Connect; the CONNACK reason code (the client stays connected only on success)."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = session_expiry_s
        self._paho.connect(HOST, self._port, 30, clean_start=clean_start, properties=props)
        self._paho.loop_start()
        if not self.connected.wait(WAIT_S) or self.connack is None:
            raise TimeoutError("no CONNACK")
        if self.connack.is_failure:
            self.close()
        return self.connack

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        """Publish at QoS 1; the PUBACK reason code."""
        info = self._paho.publish(topic, payload, qos=1)
        with self._done:
            if not self._done.wait_for(lambda: info.mid in self._acks, WAIT_S):
                raise TimeoutError("no PUBACK")
            return self._acks.pop(info.mid)

    def subscribe(self, topic: str) -> list[ReasonCode]:
        """Subscribe at QoS 1; the SUBACK reason codes."""
        _, sent = self._paho.subscribe(topic, qos=1)
        mid = int(sent or 0)
        with self._done:
            if not self._done.wait_for(lambda: mid in self._subacks, WAIT_S):
                raise TimeoutError("no SUBACK")
            return self._subacks.pop(mid)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self._paho.disconnect()
        self._paho.loop_stop()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.connack = reason
        self.connected.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _reason: ReasonCode, _p: Any) -> None:
        self.disconnected.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        with self._done:
            self._acks[mid] = reason
            self._done.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, reasons: list[ReasonCode], _p: Any) -> None:
        with self._done:
            self._subacks[mid] = reasons
            self._done.notify_all()


@contextlib.contextmanager
def running_broker(directory: Path, prefix: str) -> Iterator[DynsecBroker]:
    """A fresh dynamic-security Mosquitto in ``directory`` with the bridge's account, stopped after."""
    broker = DynsecBroker(directory)
    broker.init(prefix)
    broker.start()
    broker.add_bridge_account()
    try:
        yield broker
    finally:
        broker.stop()


def login(port: int, username: str, password: str, client_id: str | None = None) -> ReasonCode:
    """The CONNACK of one connection attempt (closed right after)."""
    client = MqttClient(port, username, password, client_id or username)
    reason = client.connect()
    if not reason.is_failure:
        client.close()
    return reason
