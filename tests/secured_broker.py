"""A Mosquitto secured the way ``cityingest dev`` secures it (dev CA, TLS, dynamic security, the bridge's
account), built with the dev stack's own code, and helpers to try a client against it."""

from __future__ import annotations

import queue
import socket
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from devstack.certs import DevCertificates, ensure_certificates
from devstack.dynsec import BRIDGE_USERNAME, Command, anonymous_commands, bridge_commands, run_commands
from devstack.mosquitto import BrokerSecurity, MosquittoBroker
from devstack.process import free_port

HOST = "127.0.0.1"
ADMIN_PASSWORD = "admin-" + uuid.uuid4().hex
BRIDGE_PASSWORD = "bridge-" + uuid.uuid4().hex
PREFIX = "city"


@dataclass
class SecuredBroker:
    """The running broker, its certificates, and the bridge's password."""

    broker: MosquittoBroker
    certs: DevCertificates
    cert_port: int
    plain_port: int | None
    files: Path
    bridge_password: str = BRIDGE_PASSWORD
    devices: set[str] = field(default_factory=set)

    @property
    def port(self) -> int:
        """The TLS (password) listener."""
        return self.broker.port

    def admin(self, commands: list[Command]) -> list[Command]:
        """Run dynamic security commands as the admin."""
        return run_commands(HOST, self.port, self.certs.ca_cert, ADMIN_PASSWORD, commands)

    def add_device(self, device: str, password: str, domain: str = "water", prefix: str = PREFIX) -> str:
        """A device account as the contract lays it out (``cred``'s API makes these in the dev stack);
        its topic."""
        topic = f"{prefix}/{domain}/{device}/telemetry"
        self.admin(device_commands(device, password, topic))
        return topic

    def client_cert(self, common_name: str, ca: tuple[Path, Path] | None = None) -> tuple[str, str]:
        """A client certificate (and key) for ``common_name`` signed by the dev CA, or by ``ca``."""
        ca_cert_path, ca_key_path = ca or (self.certs.ca_cert, self.certs.ca_key)
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=1))
            .sign(ca_key, hashes.SHA256())
        )
        name = uuid.uuid4().hex[:8]
        cert_path, key_path = self.files / f"{name}.pem", self.files / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return str(cert_path), str(key_path)


def device_commands(
    device: str, password: str, topic: str, textname: str | None = "cityingest device"
) -> list[Command]:
    """Dynamic security commands making a device's account as the API does: its own role that may publish
    to ``topic`` only, the client id pinned to the device id. ``textname`` None leaves out the mark of
    the API's accounts (where an API runs, its reconciler deletes marked accounts it did not issue)."""
    role = f"cityingest-device:{device}"
    return [
        {"command": "createRole", "rolename": role},
        {
            "command": "addRoleACL",
            "rolename": role,
            "acltype": "publishClientSend",
            "topic": topic,
            "allow": True,
        },
        {
            "command": "createClient",
            "username": device,
            "password": password,
            "clientid": device,
            "roles": [{"rolename": role}],
        }
        | ({"textname": textname} if textname is not None else {}),
    ]


def start_secured_broker(files: Path, *, insecure: bool = False) -> SecuredBroker:
    """Start a broker as the dev stack does (``insecure`` adds the plain anonymous listener)."""
    certs = ensure_certificates(files / "ca")
    cert_port = free_port()
    plain_port = free_port() if insecure else None
    security = BrokerSecurity(
        certs.ca_cert, certs.server_cert, certs.server_key, cert_port=cert_port, plain_port=plain_port
    )
    broker = MosquittoBroker(files / "mosquitto", free_port(), security=security)
    broker.init_dynsec(ADMIN_PASSWORD)
    broker.start()
    secured = SecuredBroker(broker, certs, cert_port, plain_port, files)
    try:
        commands = bridge_commands(PREFIX, BRIDGE_PASSWORD)
        secured.admin(commands + anonymous_commands(PREFIX) if insecure else commands)
    except BaseException:
        broker.stop()
        raise
    return secured


@pytest.fixture(scope="module")
def secured_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    """A secured broker (no plain listener) for this module."""
    secured = start_secured_broker(tmp_path_factory.mktemp("secured-mqtt"))
    try:
        yield secured
    finally:
        secured.broker.stop()


@dataclass
class Attempt:
    """What the broker answered a client: CONNACK, then SUBACK or PUBACK reason codes (MQTT 5)."""

    connack: int | None = None
    error: str | None = None
    suback: list[int] = field(default_factory=list)
    puback: int | None = None
    client_id: str = ""


def attempt(
    port: int,
    *,
    ca_file: Path | None = None,
    login: tuple[str, str] | None = None,
    cert: tuple[str, str] | None = None,
    client_id: str | None = None,
    subscribe: list[str] | None = None,
    publish: str | None = None,
    payload: bytes = b'{"metric": "water_flow", "value": 1.0}',
) -> Attempt:
    """Connect (over TLS if ``ca_file``), then subscribe to or publish on the given topics, recording
    every answer of the broker; a refused TLS handshake or connection is ``error``."""
    result = Attempt()
    answers: queue.Queue[str] = queue.Queue()
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or f"try-{uuid.uuid4().hex[:8]}",
        protocol=paho.MQTTv5,
    )
    if ca_file is not None:
        context = ssl.create_default_context(cafile=str(ca_file))
        if cert is not None:
            context.load_cert_chain(*cert)
        # paho leaks the socket of a handshake that failed: try the handshake on a socket of our own first.
        try:
            with (
                socket.create_connection((HOST, port), timeout=10) as raw,
                context.wrap_socket(raw, server_hostname=HOST),
            ):
                pass
        except OSError as exc:  # ssl.SSLError included: a refused certificate
            result.error = repr(exc)
            return result
        client.tls_set_context(context)
    if login is not None:
        client.username_pw_set(*login)

    def on_connect(_c: paho.Client, _u: Any, _f: Any, reason: ReasonCode, props: Any) -> None:
        result.connack = reason.value
        assigned = getattr(props, "AssignedClientIdentifier", None)
        result.client_id = assigned or client._client_id.decode()
        answers.put("connack")

    def on_subscribe(_c: paho.Client, _u: Any, _m: int, reasons: list[ReasonCode], _p: Any) -> None:
        result.suback = [r.value for r in reasons]
        answers.put("suback")

    def on_publish(_c: paho.Client, _u: Any, _m: int, reason: ReasonCode, _p: Any) -> None:
        result.puback = reason.value
        answers.put("puback")

    def on_disconnect(*_args: Any) -> None:
        answers.put("disconnect")

    client.on_connect, client.on_subscribe = on_connect, on_subscribe
    client.on_publish, client.on_disconnect = on_publish, on_disconnect
    try:
        client.connect(HOST, port, keepalive=10)
    except OSError as exc:
        result.error = repr(exc)
        return result
    client.loop_start()
    try:
        if _next(answers) != "connack" or result.connack != 0:
            return result
        if subscribe:
            client.subscribe([(topic, 1) for topic in subscribe])
            _next(answers)
        if publish:
            client.publish(publish, payload, qos=1)
            _next(answers)
    finally:
        client.disconnect()
        client.loop_stop()
    return result


def _next(answers: queue.Queue[str]) -> str:
    try:
        return answers.get(timeout=10)
    except queue.Empty:
        return "nothing"


__all__ = ["BRIDGE_USERNAME", "HOST", "PREFIX", "Attempt", "SecuredBroker", "attempt", "secured_broker"]
