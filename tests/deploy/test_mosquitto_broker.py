"""deploy/mosquitto against a real Mosquitto: TLS only, dynamic security bootstrapped by the entrypoint.

The broker is started by the production ``entrypoint.sh`` itself, with the production ``mosquitto.conf``
and ``client-cert-listener.conf`` changed only in their paths and listeners (free ports on 127.0.0.1),
and certificates from trustme standing in for the secrets. Devices are created as the API's contract
lays them out (username = client id = device id, one role with one publish ACL), through mosquitto_ctrl
as the admin account.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
import pytest
import trustme
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from devstack.mosquitto import DEFAULT_PERSISTENCE
from devstack.process import ChildProcess, ServiceError, chown_tree, free_port, service_user, wait_for_port
from ingest.settings import BridgeSettings, guessable_client_id
from tests.deploy.compose import interpolate
from tests.deploy.test_compose import ENV, settings_of

pytestmark = pytest.mark.integration

REPO: Final = Path(__file__).resolve().parents[2]
MOSQUITTO_DIR: Final = REPO / "deploy" / "mosquitto"
ADMIN: Final = "cityingest-admin"
BRIDGE: Final = "cityingest-bridge"
ADMIN_PASSWORD: Final = "admin secret"  # noqa: S105 - the throwaway test broker's
BRIDGE_PASSWORD: Final = "bridge-secret"  # noqa: S105 - the throwaway test broker's
DEVICES: Final = {"dev-a": ("water", "secret-a"), "dev-b": ("air", "pw:with:colons")}
CERT_DEVICE: Final = "dev-c"
WAIT_S: Final = 10.0
NOT_AUTHORIZED: Final = 0x87
BAD_CREDENTIALS: Final = 0x86
CLIENT_ID_NOT_VALID: Final = 0x85


@dataclass(frozen=True)
class Certificates:
    """PEM files: the broker's certificate and key, the CA the clients trust, device certificates."""

    directory: Path
    secrets: Path

    @property
    def server_ca(self) -> Path:
        """The CA that signed the broker's certificate (what the bridge and the API trust)."""
        return self.directory / "server-ca.pem"

    def device(self, name: str) -> tuple[Path, Path]:
        """Certificate and key of a device certificate (``dev-c`` from the device CA, ``other`` not)."""
        return self.directory / f"{name}.crt", self.directory / f"{name}.key"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A server CA and certificate for localhost, a device CA with a device certificate for dev-c, and
    a certificate with the same Common Name from another CA."""
    directory = tmp_path_factory.mktemp("mqtt-certs")
    secrets = directory / "secrets"
    secrets.mkdir()
    server_ca, device_ca, other_ca = trustme.CA(), trustme.CA(), trustme.CA()
    server = server_ca.issue_cert("localhost", "127.0.0.1")
    server.cert_chain_pems[0].write_to_path(str(secrets / "mqtt_server_cert"))
    server.private_key_pem.write_to_path(str(secrets / "mqtt_server_key"))
    device_ca.cert_pem.write_to_path(str(secrets / "mqtt_device_ca"))
    server_ca.cert_pem.write_to_path(str(directory / "server-ca.pem"))
    for name, ca in ((CERT_DEVICE, device_ca), ("other", other_ca)):
        leaf = ca.issue_cert(CERT_DEVICE, common_name=CERT_DEVICE)
        leaf.cert_chain_pems[0].write_to_path(str(directory / f"{name}.crt"))
        leaf.private_key_pem.write_to_path(str(directory / f"{name}.key"))
    # As Compose mounts a secret: owned by the host's user, unreadable for the mosquitto user.
    for secret in secrets.iterdir():
        secret.chmod(0o600)
    return Certificates(directory, secrets)


class Broker:
    """The production entrypoint and the broker it execs, on free loopback ports."""

    def __init__(self, base: Path, certs: Certificates) -> None:
        self.base = base
        self.certs = certs
        self.src, self.conf_dir, self.data_dir = base / "src", base / "config", base / "data"
        for d in (self.src, self.conf_dir, self.data_dir):
            d.mkdir()
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_port())
        self.port, self.cert_port, self.bootstrap_port = sorted(ports)
        self.admin_password = ADMIN_PASSWORD
        self.bridge_password = BRIDGE_PASSWORD
        self.proc: ChildProcess | None = None
        for name, listener in (
            ("mosquitto.conf", ("listener 8883\n", f"listener {self.port} 127.0.0.1\n")),
            ("client-cert-listener.conf", ("listener 8884\n", f"listener {self.cert_port} 127.0.0.1\n")),
        ):
            conf = (MOSQUITTO_DIR / name).read_text(encoding="utf-8")
            for old, new in (listener, ("/mosquitto/config/", f"{self.conf_dir}/")):
                assert old in conf, f"{name} no longer contains {old!r}: adapt this test"
                conf = conf.replace(old, new)
            conf = conf.replace("/mosquitto/data/", f"{self.data_dir}/")
            (self.src / name).write_text(conf, encoding="utf-8")
        chown_tree(base, service_user("mosquitto"))

    def env(self) -> dict[str, str]:
        """The entrypoint's environment: the secrets and the test's paths."""
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "MQTT_ADMIN_PASSWORD": self.admin_password,
            "MQTT_BRIDGE_PASSWORD": self.bridge_password,
            "MQTT_CLIENT_CERT_LISTENER": "true",
            "CITYINGEST_MQTT_CONF_SRC": str(self.src),
            "MOSQUITTO_CONF_DIR": str(self.conf_dir),
            "MOSQUITTO_DATA_DIR": str(self.data_dir),
            "MQTT_SECRETS_DIR": str(self.certs.secrets),
            "MOSQUITTO_BOOTSTRAP_PORT": str(self.bootstrap_port),
        }

    def start(self) -> None:
        """Run the entrypoint; return once both TLS listeners accept connections."""
        proc = ChildProcess(
            "mosquitto-entrypoint",
            ["sh", str(MOSQUITTO_DIR / "entrypoint.sh")],
            log_path=self.base / "mosquitto.log",
            env=self.env(),
        )
        proc.start()
        self.proc = proc
        try:
            for port in (self.port, self.cert_port):
                wait_for_port("127.0.0.1", port, 60.0, proc.alive)
        except ServiceError as exc:
            proc.stop()
            raise ServiceError(f"{exc}\n{proc.tail()}") from None

    def stop(self) -> None:
        """Stop the broker (it saves its state)."""
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def ctl(self, *args: str, password: str | None = None) -> str:
        """A ``mosquitto_ctrl dynsec`` command as the admin account over TLS; its output."""
        result = subprocess.run(
            [
                "mosquitto_ctrl",
                *("-h", "localhost", "-p", str(self.port), "--cafile", str(self.certs.server_ca)),
                *("-u", ADMIN, "-P", password or self.admin_password),
                "dynsec",
                *args,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        out = result.stdout + result.stderr
        assert result.returncode == 0, out
        return out

    def create_device(self, device_id: str, domain: str, password: str | None) -> None:
        """A device as the API creates it (docs: CONTRACT of issue 16)."""
        role = f"cityingest-device:{device_id}"
        extra = ["-p", password] if password is not None else []
        for args in (
            ["createClient", device_id, "-c", device_id, *extra],
            ["setClientId", device_id, device_id],
            ["createRole", role],
            ["addRoleACL", role, "publishClientSend", f"city/{domain}/{device_id}/telemetry", "allow"],
            ["addClientRole", device_id, role],
        ):
            out = self.ctl(*args)
            assert "Error" not in out, (args[0], out)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, certs: Certificates) -> Iterator[Broker]:
    """Mosquitto started through deploy/mosquitto/entrypoint.sh, with dev-a, dev-b and dev-c."""
    if shutil.which("mosquitto_ctrl", path="/usr/bin:/usr/sbin") is None:
        raise ServiceError("mosquitto_ctrl is missing: `apt-get install mosquitto mosquitto-clients`")
    broker = Broker(tmp_path_factory.mktemp("mosquitto-prod"), certs)
    broker.start()
    try:
        for device_id, (domain, password) in DEVICES.items():
            broker.create_device(device_id, domain, password)
        broker.create_device(CERT_DEVICE, "energy", None)
        yield broker
    finally:
        broker.stop()


@dataclass
class Session:
    """A connected paho client recording CONNACK, PUBACK, SUBACK and received messages."""

    client: mqtt.Client
    connack: ReasonCode | None = None
    connected: threading.Event = field(default_factory=threading.Event)
    pubacks: dict[int, ReasonCode] = field(default_factory=dict)
    acked: threading.Condition = field(default_factory=threading.Condition)
    subacks: dict[int, list[ReasonCode]] = field(default_factory=dict)
    messages: queue.Queue[tuple[str, bytes]] = field(default_factory=queue.Queue)

    @property
    def accepted(self) -> bool:
        """Whether the broker accepted the connection."""
        return self.connack is not None and not self.connack.is_failure

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=1)
        with self.acked:
            assert self.acked.wait_for(lambda: info.mid in self.pubacks, WAIT_S), f"no PUBACK for {topic}"
            return self.pubacks[info.mid]

    def subscribe(self, topic: str) -> list[int]:
        """Subscribe at QoS 1 and return the SUBACK's reason code values."""
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        with self.acked:
            assert self.acked.wait_for(lambda: mid in self.subacks, WAIT_S), f"no SUBACK for {topic}"
            return [rc.value for rc in self.subacks[mid]]

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


def connect(
    broker: Broker,
    username: str | None,
    password: str | None,
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
    *,
    client_id: str | None = None,
    session_expiry_s: int = 0,
    cert: str | None = None,
) -> Session:
    """Connect over TLS and wait for the CONNACK (accepted or not); the caller closes the session.

    With ``cert`` (a name for ``Certificates.device``) on the client certificate listener; with
    ``session_expiry_s`` (MQTT 5) the broker keeps the session, as it does the bridge's."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{uuid.uuid4().hex[:8]}", protocol=protocol
    )
    session = Session(client)
    if username is not None:
        client.username_pw_set(username, password)
    certfile, keyfile = broker.certs.device(cert) if cert is not None else (None, None)
    client.tls_set(
        ca_certs=str(broker.certs.server_ca),
        certfile=str(certfile) if certfile else None,
        keyfile=str(keyfile) if keyfile else None,
    )

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Properties | None) -> None:
        if session.connack is None:
            session.connack = rc
        session.connected.set()

    def on_publish(_c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Properties | None) -> None:
        with session.acked:
            session.pubacks[mid] = rc
            session.acked.notify_all()

    def on_subscribe(
        _c: mqtt.Client, _u: Any, mid: int, rcs: list[ReasonCode], _p: Properties | None
    ) -> None:
        with session.acked:
            session.subacks[mid] = rcs
            session.acked.notify_all()

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        session.messages.put((msg.topic, bytes(msg.payload)))

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    port = broker.cert_port if cert is not None else broker.port
    if session_expiry_s:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = session_expiry_s
        client.connect("localhost", port, clean_start=False, properties=props)
    else:
        client.connect("localhost", port)
    client.loop_start()
    assert session.connected.wait(WAIT_S), "no CONNACK"
    return session


def tls_handshake_fails(broker: Broker, cert: str | None) -> bool:
    """Whether the cert listener refuses the TLS handshake (or closes it at once) with this certificate."""
    context = ssl.create_default_context(cafile=str(broker.certs.server_ca))
    if cert is not None:
        certfile, keyfile = broker.certs.device(cert)
        context.load_cert_chain(certfile, keyfile)
    try:
        with (
            socket.create_connection(("localhost", broker.cert_port), timeout=WAIT_S) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            # TLS 1.3 reports a refused client certificate only on the first read.
            tls.sendall(mqtt_connect_packet(f"t-{uuid.uuid4().hex[:8]}"))
            return tls.recv(4) == b""
    except (ssl.SSLError, ConnectionError):
        return True


def mqtt_connect_packet(client_id: str) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session and no credentials."""
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body


@pytest.fixture
def bridge(broker: Broker) -> Iterator[Session]:
    """The bridge account on its shared subscription, as `cityingest bridge --shared-group bridges`."""
    session = connect(broker, BRIDGE, BRIDGE_PASSWORD)
    try:
        assert session.accepted
        assert session.subscribe("$share/bridges/city/#") == [1]
        yield session
    finally:
        session.close()


@pytest.fixture
def dev_a(broker: Broker) -> Iterator[Session]:
    """Device dev-a over MQTT 5, with its pinned client id."""
    session = connect(broker, "dev-a", DEVICES["dev-a"][1], client_id="dev-a")
    try:
        assert session.accepted
        yield session
    finally:
        session.close()


def next_message(session: Session) -> tuple[str, bytes]:
    """The next message the session received."""
    try:
        return session.messages.get(timeout=WAIT_S)
    except queue.Empty:
        pytest.fail("no message delivered")


def test_plaintext_is_refused(broker: Broker) -> None:
    # MQTT in clear text on the TLS port: the broker never answers with a CONNACK.
    with socket.create_connection(("127.0.0.1", broker.port), timeout=WAIT_S) as sock:
        sock.sendall(mqtt_connect_packet("plain"))
        try:
            answer = sock.recv(4)
        except ConnectionError:
            answer = b""
        assert answer == b""
    # The loopback listener the entrypoint configured the broker through is gone.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", broker.bootstrap_port), timeout=WAIT_S).close()
    conf = (broker.conf_dir / "mosquitto.conf").read_text(encoding="utf-8")
    listeners = [line.split()[1] for line in conf.splitlines() if line.startswith("listener ")]
    assert listeners == [str(broker.port), str(broker.cert_port)]


def test_state_holds_hashes_only(broker: Broker) -> None:
    state_file = broker.data_dir / "dynamic-security.json"
    text = state_file.read_text(encoding="utf-8")
    for secret in (ADMIN_PASSWORD, BRIDGE_PASSWORD, *(pw for _, pw in DEVICES.values())):
        assert secret not in text
    assert state_file.stat().st_mode & 0o077 == 0
    state = json.loads(text)
    assert {c["username"] for c in state["clients"]} == {ADMIN, BRIDGE, *DEVICES, CERT_DEVICE}
    # The copies of the TLS secrets are private to the broker too.
    for name in ("server.key", "server.crt", "device-ca.crt"):
        assert (broker.conf_dir / "tls" / name).stat().st_mode & 0o077 == 0


def test_roles_are_the_contracts(broker: Broker) -> None:
    bridge_role = broker.ctl("getRole", BRIDGE)
    acls = sorted(
        line.split(" : ")[2].rsplit(" (priority", 1)[0] for line in bridge_role.splitlines() if " : " in line
    )
    assert acls == ["$SYS/broker/uptime", "$share/+/city/#", "city/#"]
    assert "subscribePattern" in bridge_role
    assert "publishClientSend" not in bridge_role
    admin_role = broker.ctl("getRole", "admin")
    assert ": #" not in admin_role  # the stock admin role reads every topic; ours does not
    assert "$CONTROL/dynamic-security/#" in admin_role
    default = broker.ctl("getDefaultACLAccess")
    assert [line.split(":")[1].strip() for line in default.splitlines() if " : " in line] == [
        "deny",
        "allow",
        "deny",
        "allow",
    ]


@pytest.mark.parametrize(
    ("username", "password"),
    [
        (None, None),
        ("dev-a", "wrong"),
        ("dev-a", DEVICES["dev-b"][1]),
        ("dev-zz", DEVICES["dev-a"][1]),
        (BRIDGE, "wrong"),
        (ADMIN, "wrong"),
    ],
    ids=[
        "anonymous",
        "wrong-password",
        "other-device-password",
        "unknown-device",
        "bridge-wrong",
        "admin-wrong",
    ],
)
@pytest.mark.parametrize("protocol", [MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311])
def test_connection_refused(
    broker: Broker, username: str | None, password: str | None, protocol: MQTTProtocolVersion
) -> None:
    session = connect(broker, username, password, protocol, client_id=username)
    try:
        assert session.connack is not None
        assert session.connack.is_failure
        if protocol is MQTTProtocolVersion.MQTTv5:
            assert session.connack.value in {NOT_AUTHORIZED, BAD_CREDENTIALS}
    finally:
        session.close()


def test_bridge_subscribes_and_nothing_else(bridge: Session) -> None:
    assert bridge.subscribe("city/+/+/telemetry") == [1]
    assert bridge.subscribe("$SYS/broker/uptime") == [1]
    for refused in ("#", "$share/bridges/#", "$share/bridges/other/#", "other/#", "$SYS/#", "$CONTROL/#"):
        assert bridge.subscribe(refused) == [NOT_AUTHORIZED], refused
    assert bridge.publish("city/water/dev-a/telemetry", b"forged").value == NOT_AUTHORIZED
    assert bridge.publish("$CONTROL/dynamic-security/v1", b"{}").value == NOT_AUTHORIZED


def test_device_publishes_only_its_own_topic(dev_a: Session, bridge: Session) -> None:
    assert dev_a.publish("city/water/dev-a/telemetry", b"own").value == 0
    assert next_message(bridge) == ("city/water/dev-a/telemetry", b"own")
    for topic in ("city/water/dev-b/telemetry", "city/water/dev-a/other", "city/energy/dev-a/telemetry"):
        assert dev_a.publish(topic, b"forged").value == NOT_AUTHORIZED, topic
    # The broker handles one client's packets in order: once the later, allowed message has arrived,
    # the forged ones would have arrived before it.
    assert dev_a.publish("city/water/dev-a/telemetry", b"after").value == 0
    assert next_message(bridge) == ("city/water/dev-a/telemetry", b"after")
    assert bridge.messages.empty()


def test_device_cannot_publish_as_another_device_mqtt311(broker: Broker, bridge: Session) -> None:
    dev_b = connect(broker, "dev-b", DEVICES["dev-b"][1], MQTTProtocolVersion.MQTTv311, client_id="dev-b")
    try:
        assert dev_b.accepted
        # MQTT 3.1.1 has no way to refuse a publish: the broker acknowledges it and drops it.
        dev_b.publish("city/water/dev-a/telemetry", b"forged")
        dev_b.publish("city/air/dev-b/telemetry", b"after")
        assert next_message(bridge) == ("city/air/dev-b/telemetry", b"after")
        assert bridge.messages.empty()
    finally:
        dev_b.close()


def test_device_reads_nothing(dev_a: Session) -> None:
    assert dev_a.subscribe("city/+/+/telemetry") == [NOT_AUTHORIZED]
    assert dev_a.subscribe("city/water/dev-a/telemetry") == [NOT_AUTHORIZED]
    assert dev_a.subscribe("$SYS/#") == [NOT_AUTHORIZED]


def test_device_client_id_is_pinned(broker: Broker) -> None:
    for client_id in ("dev-b", "other", BRIDGE):
        session = connect(broker, "dev-a", DEVICES["dev-a"][1], client_id=client_id)
        try:
            assert not session.accepted, client_id
        finally:
            session.close()


def test_device_cannot_wipe_the_bridges_queue(
    broker: Broker, dev_a: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bridge exactly as docker-compose.yml configures it, through the real command line.
    compose = interpolate(yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8")), ENV)
    command, settings, _ = settings_of(compose["services"]["bridge-1"], monkeypatch)
    assert command == "bridge"
    assert isinstance(settings, BridgeSettings)
    assert settings.shared_group is not None
    assert settings.mqtt_username == BRIDGE
    sub = f"$share/{settings.shared_group}/city/+/+/telemetry"
    # Its persistent session, then it goes away: what devices publish now is queued for it.
    bridge = connect(broker, BRIDGE, BRIDGE_PASSWORD, client_id=settings.client_id, session_expiry_s=3600)
    try:
        assert bridge.accepted
        assert bridge.subscribe(sub) == [1]
    finally:
        bridge.close()
    sent = [f"queued-{i}".encode() for i in range(5)]
    for payload in sent:
        assert dev_a.publish("city/water/dev-a/telemetry", payload).value == 0
    # Every id a device can know or guess, with a clean session: the device's pinned client id refuses
    # them all before they could discard the bridge's session.
    guesses = {
        BRIDGE,
        "bridge",
        guessable_client_id(socket.gethostname()),
        "cityingest-bridge-1",
        guessable_client_id(settings.bridge_id),
        settings.client_id,
    }
    for guess in sorted(guesses):
        for protocol in (MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311):
            session = connect(broker, "dev-a", DEVICES["dev-a"][1], protocol, client_id=guess)
            try:
                assert not session.accepted, guess
            finally:
                session.close()
    back = connect(broker, BRIDGE, BRIDGE_PASSWORD, client_id=settings.client_id, session_expiry_s=3600)
    try:
        assert back.accepted
        assert [next_message(back) for _ in sent] == [("city/water/dev-a/telemetry", p) for p in sent]
        # Clean up: the next test's bridge fixture shares the subscription group.
        back.client.unsubscribe(sub)
    finally:
        back.close()


def test_client_certificate_listener(broker: Broker, bridge: Session) -> None:
    device = connect(broker, None, None, client_id=CERT_DEVICE, cert=CERT_DEVICE)
    try:
        assert device.accepted
        # The certificate's Common Name is the username: dev-c's role applies.
        assert device.publish("city/energy/dev-c/telemetry", b"by-cert").value == 0
        assert next_message(bridge) == ("city/energy/dev-c/telemetry", b"by-cert")
        assert device.publish("city/water/dev-a/telemetry", b"forged").value == NOT_AUTHORIZED
    finally:
        device.close()
    # Same Common Name, another CA; no certificate at all: refused in the TLS handshake.
    assert tls_handshake_fails(broker, "other")
    assert tls_handshake_fails(broker, None)
    assert not tls_handshake_fails(broker, CERT_DEVICE)


def test_client_certificate_of_a_deleted_client_cannot_publish(broker: Broker) -> None:
    """Mosquitto 2.0 lets a certificate connect whatever dynamic security says; revocation holds
    because the deleted client's publishes fall to the default deny (docs/operations.md)."""
    broker.create_device("dev-d", "energy", None)
    assert "Error" not in broker.ctl("deleteClient", "dev-d")
    assert "Error" not in broker.ctl("deleteRole", "cityingest-device:dev-d")
    device = connect(broker, None, None, client_id="dev-d", cert=CERT_DEVICE)
    try:
        assert device.accepted
        assert device.publish("city/energy/dev-d/telemetry", b"revoked").value == NOT_AUTHORIZED
    finally:
        device.close()


def test_restart_keeps_the_state_and_applies_rotated_passwords(tmp_path: Path, certs: Certificates) -> None:
    broker = Broker(tmp_path, certs)
    broker.start()
    try:
        broker.create_device("dev-r", "water", "secret-r")
    finally:
        broker.stop()
    broker.admin_password = "rotated admin"  # noqa: S105 - the throwaway test broker's
    broker.bridge_password = "rotated-bridge"  # noqa: S105 - the throwaway test broker's
    broker.start()
    try:
        device = connect(broker, "dev-r", "secret-r", client_id="dev-r")
        try:
            assert device.accepted
            assert not device.publish("city/water/dev-r/telemetry", b"kept").is_failure
        finally:
            device.close()
        for password, accepted in ((BRIDGE_PASSWORD, False), ("rotated-bridge", True)):
            session = connect(broker, BRIDGE, password)
            try:
                assert session.accepted is accepted, password
            finally:
                session.close()
        assert "Username: dev-r" in broker.ctl("getClient", "dev-r")
        old = subprocess.run(
            [
                "mosquitto_ctrl",
                *("-h", "localhost", "-p", str(broker.port), "--cafile", str(certs.server_ca)),
                *("-u", ADMIN, "-P", ADMIN_PASSWORD, "dynsec", "listClients"),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert "dev-r" not in old.stdout
        assert "Not authorized" in old.stdout + old.stderr
    finally:
        broker.stop()


def test_compose_healthcheck_command_passes(broker: Broker) -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    kind, command = compose["services"]["mosquitto"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    # Compose turns $$ into a literal $; the container's broker listens on 8883, its secrets in /run.
    shell = (
        command.replace("$$", "$")
        .replace("-p 8883", f"-p {broker.port}")
        .replace("/run/secrets/mqtt_server_ca", str(broker.certs.server_ca))
    )
    for password, ok in ((BRIDGE_PASSWORD, True), ("wrong", False)):
        result = subprocess.run(
            ["sh", "-c", shell],
            env={"PATH": os.environ["PATH"], "MQTT_BRIDGE_PASSWORD": password, "MQTT_HOSTNAME": "localhost"},
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert (result.returncode == 0) is ok, result.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"CITYINGEST_MQTT_TOPIC_PREFIX": "city/#"}, "CITYINGEST_MQTT_TOPIC_PREFIX"),
        ({"CITYINGEST_MQTT_TOPIC_PREFIX": "+"}, "CITYINGEST_MQTT_TOPIC_PREFIX"),
        ({"MQTT_ADMIN_PASSWORD": ""}, "MQTT_ADMIN_PASSWORD"),
        ({"MQTT_BRIDGE_PASSWORD": ""}, "MQTT_BRIDGE_PASSWORD"),
        ({"MQTT_SECRETS_DIR": "/nonexistent"}, "mqtt_server_cert"),
        ({"MQTT_CLIENT_CERT_LISTENER": "yes"}, "MQTT_CLIENT_CERT_LISTENER"),
    ],
)
def test_entrypoint_refuses_bad_settings(
    tmp_path: Path, certs: Certificates, change: dict[str, str], message: str
) -> None:
    broker = Broker(tmp_path, certs)
    result = subprocess.run(
        ["sh", str(MOSQUITTO_DIR / "entrypoint.sh")],
        env={**broker.env(), **change},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode != 0, result.stdout
    assert message in result.stderr
    assert not (broker.data_dir / "dynamic-security.json").exists()


def test_production_broker_saves_as_often_as_the_dev_broker() -> None:
    # The loss window of a broker crash (docs/operations.md) is the same promise in dev and production.
    conf = (MOSQUITTO_DIR / "mosquitto.conf").read_text(encoding="utf-8").splitlines()
    settings = {line.split()[0]: line.split()[1] for line in conf if line and not line.startswith("#")}
    assert settings["persistence"] == "true"
    expected = DEFAULT_PERSISTENCE.lines(Path("/mosquitto/data"))
    assert [f"{key} {settings[key]}" for key in ("autosave_interval", "autosave_on_changes")] == expected[2:]
