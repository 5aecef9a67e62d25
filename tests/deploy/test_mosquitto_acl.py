"""deploy/mosquitto against a real Mosquitto: accounts from the entrypoint, and the per-device ACL.

The broker is started by the production ``entrypoint.sh`` itself, with the production ``acl`` and the
production ``mosquitto.conf`` changed only in its paths and listener (a free port on 127.0.0.1).
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
import pytest
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
from tests.ingest.support import connect_clean

pytestmark = pytest.mark.integration

REPO: Final = Path(__file__).resolve().parents[2]
MOSQUITTO_DIR: Final = REPO / "deploy" / "mosquitto"
BRIDGE_PASSWORD: Final = "bridge-secret"  # noqa: S105 - the throwaway test broker's
DEVICES: Final = {"dev-a": "secret-a", "dev-b": "pw:with:colons"}
WAIT_S: Final = 10.0
NOT_AUTHORIZED: Final = 0x87
BAD_CREDENTIALS: Final = 0x86


@dataclass
class Broker:
    """The running broker and what the test needs to talk to it."""

    port: int
    conf_dir: Path
    proc: ChildProcess


def _adapted_conf(port: int, conf_dir: Path, data_dir: Path) -> str:
    conf = (MOSQUITTO_DIR / "mosquitto.conf").read_text(encoding="utf-8")
    for old, new in (
        ("listener 1883\n", f"listener {port} 127.0.0.1\n"),
        ("/mosquitto/config/", f"{conf_dir}/"),
        ("/mosquitto/data/", f"{data_dir}/"),
    ):
        assert old in conf, f"mosquitto.conf no longer contains {old!r}: adapt this test"
        conf = conf.replace(old, new)
    return conf


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Mosquitto started through deploy/mosquitto/entrypoint.sh with two device accounts."""
    if shutil.which("mosquitto_passwd", path="/usr/bin:/usr/sbin") is None:
        raise ServiceError("mosquitto_passwd is missing: `apt-get install mosquitto mosquitto-clients`")
    base = tmp_path_factory.mktemp("mosquitto-acl")
    src, conf_dir, data_dir = base / "src", base / "config", base / "data"
    for d in (src, conf_dir, data_dir):
        d.mkdir()
    port = free_port()
    (src / "mosquitto.conf").write_text(_adapted_conf(port, conf_dir, data_dir), encoding="utf-8")
    shutil.copy(MOSQUITTO_DIR / "acl", src / "acl")
    # A comment, a blank line, CRLF endings, a password with colons and no final newline: all as
    # operators write them.
    devices = base / "devices"
    devices.write_bytes(b"# device-id:password\r\n\r\ndev-a:secret-a\r\ndev-b:pw:with:colons")
    chown_tree(base, service_user("mosquitto"))
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "MQTT_BRIDGE_PASSWORD": BRIDGE_PASSWORD,
        "CITYINGEST_MQTT_CONF_SRC": str(src),
        "MOSQUITTO_CONF_DIR": str(conf_dir),
        "MOSQUITTO_DATA_DIR": str(data_dir),
        "MQTT_DEVICES_SECRET": str(devices),
    }
    proc = ChildProcess(
        "mosquitto-entrypoint",
        ["sh", str(MOSQUITTO_DIR / "entrypoint.sh")],
        log_path=base / "mosquitto.log",
        env=env,
    )
    proc.start()
    try:
        wait_for_port("127.0.0.1", port, 30.0, proc.alive)
    except ServiceError as exc:
        proc.kill()
        proc.wait_stopped()
        raise ServiceError(f"{exc}\n{proc.tail()}") from None
    try:
        yield Broker(port, conf_dir, proc)
    finally:
        proc.stop()


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

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=1)
        with self.acked:
            assert self.acked.wait_for(lambda: info.mid in self.pubacks, WAIT_S), f"no PUBACK for {topic}"
            return self.pubacks[info.mid]

    def subscribe(self, topic: str) -> list[ReasonCode]:
        """Subscribe at QoS 1 and return the SUBACK's reason codes."""
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        with self.acked:
            assert self.acked.wait_for(lambda: mid in self.subacks, WAIT_S), f"no SUBACK for {topic}"
            return self.subacks[mid]

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
) -> Session:
    """Connect and wait for the CONNACK (accepted or not); the caller closes the session.

    With ``session_expiry_s`` (MQTT 5) the broker keeps the session, as it does the bridge's."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id or f"acl-{uuid.uuid4().hex[:8]}", protocol=protocol
    )
    session = Session(client)
    if username is not None:
        client.username_pw_set(username, password)

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
    if session_expiry_s:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = session_expiry_s
        client.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
    else:
        client.connect("127.0.0.1", broker.port)
    client.loop_start()
    assert session.connected.wait(WAIT_S), "no CONNACK"
    return session


@pytest.fixture
def bridge(broker: Broker) -> Iterator[Session]:
    """The bridge account on its shared subscription, as `cityingest bridge --shared-group bridges`."""
    session = connect(broker, "bridge", BRIDGE_PASSWORD)
    try:
        assert session.connack is not None
        assert not session.connack.is_failure
        assert [rc.value for rc in session.subscribe("$share/bridges/city/#")] == [1]
        yield session
    finally:
        session.close()


@pytest.fixture
def dev_a(broker: Broker) -> Iterator[Session]:
    """Device dev-a over MQTT 5."""
    session = connect(broker, "dev-a", DEVICES["dev-a"])
    try:
        assert session.connack is not None
        assert not session.connack.is_failure
        yield session
    finally:
        session.close()


def next_message(session: Session) -> tuple[str, bytes]:
    """The next message the session received."""
    try:
        return session.messages.get(timeout=WAIT_S)
    except queue.Empty:
        pytest.fail("no message delivered")


def test_password_file_holds_hashes_only(broker: Broker) -> None:
    passwd = (broker.conf_dir / "passwd").read_text(encoding="utf-8")
    users = [line.split(":", 1)[0] for line in passwd.splitlines() if line]
    assert sorted(users) == ["bridge", "dev-a", "dev-b"]
    for secret in (BRIDGE_PASSWORD, *DEVICES.values()):
        assert secret not in passwd
    assert not (broker.conf_dir / "passwd.new").exists()


def test_device_publishes_under_its_own_id(dev_a: Session, bridge: Session) -> None:
    assert dev_a.publish("city/water/dev-a/telemetry", b"own").value == 0
    assert next_message(bridge) == ("city/water/dev-a/telemetry", b"own")
    # Any domain, same device id.
    assert dev_a.publish("city/energy/dev-a/telemetry", b"other-domain").value == 0
    assert next_message(bridge) == ("city/energy/dev-a/telemetry", b"other-domain")


def test_device_cannot_publish_as_another_device_mqtt5(dev_a: Session, bridge: Session) -> None:
    assert dev_a.publish("city/water/dev-b/telemetry", b"forged").value == NOT_AUTHORIZED
    assert dev_a.publish("city/water/dev-a/other", b"off-layout").value == NOT_AUTHORIZED
    # The broker handles one client's packets in order: once the later, allowed message has arrived,
    # the forged ones would have arrived before it.
    assert dev_a.publish("city/water/dev-a/telemetry", b"after").value == 0
    assert next_message(bridge) == ("city/water/dev-a/telemetry", b"after")
    assert bridge.messages.empty()


def test_device_cannot_publish_as_another_device_mqtt311(broker: Broker, bridge: Session) -> None:
    dev_b = connect(broker, "dev-b", DEVICES["dev-b"], MQTTProtocolVersion.MQTTv311)
    try:
        assert dev_b.connack is not None
        assert not dev_b.connack.is_failure
        # MQTT 3.1.1 has no way to refuse a publish: the broker acknowledges it and drops it.
        dev_b.publish("city/air/dev-a/telemetry", b"forged")
        dev_b.publish("city/air/dev-b/telemetry", b"after")
        assert next_message(bridge) == ("city/air/dev-b/telemetry", b"after")
        assert bridge.messages.empty()
    finally:
        dev_b.close()


def test_device_cannot_read_telemetry(broker: Broker, dev_a: Session, bridge: Session) -> None:
    # Mosquitto 2.0 grants the SUBSCRIBE and filters each message by the read ACL at delivery.
    dev_a.subscribe("city/+/+/telemetry")
    dev_b = connect(broker, "dev-b", DEVICES["dev-b"])
    try:
        assert dev_b.publish("city/water/dev-b/telemetry", b"private").value == 0
    finally:
        dev_b.close()
    assert next_message(bridge) == ("city/water/dev-b/telemetry", b"private")
    # The broker fans a publish out to every subscriber before it acknowledges it, and sends one
    # client's packets in order: had dev-a been allowed the message, it would precede this SUBACK.
    dev_a.subscribe("city/water/dev-a/telemetry")
    assert dev_a.messages.empty()


@pytest.mark.parametrize(
    ("username", "password"),
    [
        (None, None),
        ("dev-a", "wrong"),
        ("dev-a", DEVICES["dev-b"]),
        ("dev-zz", "secret-a"),
        ("bridge", "wrong"),
    ],
    ids=["anonymous", "wrong-password", "other-device-password", "unknown-device", "bridge-wrong-password"],
)
@pytest.mark.parametrize("protocol", [MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311])
def test_connection_refused(
    broker: Broker, username: str | None, password: str | None, protocol: MQTTProtocolVersion
) -> None:
    session = connect(broker, username, password, protocol)
    try:
        assert session.connack is not None
        assert session.connack.is_failure
        if protocol is MQTTProtocolVersion.MQTTv5:
            assert session.connack.value in {NOT_AUTHORIZED, BAD_CREDENTIALS}
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
    sub = f"$share/{settings.shared_group}/city/+/+/telemetry"
    # Its persistent session, then it goes away: what devices publish now is queued for it.
    bridge = connect(broker, "bridge", BRIDGE_PASSWORD, client_id=settings.client_id, session_expiry_s=3600)
    try:
        assert bridge.connack is not None
        assert not bridge.connack.is_failure
        assert [rc.value for rc in bridge.subscribe(sub)] == [1]
    finally:
        bridge.close()
    sent = [f"queued-{i}".encode() for i in range(5)]
    for payload in sent:
        assert dev_a.publish("city/water/dev-a/telemetry", payload).value == 0
    # Every id a device can know or guess: the bridge's account name, the ids earlier releases used
    # (cityingest-bridge-<host>, compose's cityingest-bridge-1), the documented pattern without the secret.
    guesses = {
        "bridge",
        guessable_client_id(socket.gethostname()),
        "cityingest-bridge-1",
        guessable_client_id(settings.bridge_id),
    }
    assert settings.client_id not in guesses
    for guess in sorted(guesses):
        for protocol in (MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311):
            assert connect_clean(
                "127.0.0.1",
                broker.port,
                guess,
                username="dev-a",
                password=DEVICES["dev-a"],
                protocol=protocol,
            )
    back = connect(broker, "bridge", BRIDGE_PASSWORD, client_id=settings.client_id, session_expiry_s=3600)
    try:
        assert back.connack is not None
        assert not back.connack.is_failure
        assert [next_message(back) for _ in sent] == [("city/water/dev-a/telemetry", p) for p in sent]
        # Clean up: the next test's bridge fixture shares the subscription group.
        back.client.unsubscribe(sub)
    finally:
        back.close()


def test_compose_healthcheck_command_passes(broker: Broker) -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    kind, command = compose["services"]["mosquitto"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    # Compose turns $$ into a literal $; the container's broker listens on the default port.
    shell = command.replace("$$", "$") + f" -p {broker.port}"
    result = subprocess.run(
        ["sh", "-c", shell],
        env={"PATH": os.environ["PATH"], "MQTT_BRIDGE_PASSWORD": BRIDGE_PASSWORD},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    # And with a wrong password it fails, so the check means something.
    wrong = subprocess.run(
        ["sh", "-c", shell],
        env={"PATH": os.environ["PATH"], "MQTT_BRIDGE_PASSWORD": "wrong"},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert wrong.returncode != 0


def test_entrypoint_refuses_wildcard_device_ids(tmp_path: Path) -> None:
    conf_dir = tmp_path / "config"
    conf_dir.mkdir()
    devices = tmp_path / "devices"
    for bad in ("dev+x:pw", "dev/x:pw", "dev#:pw", "bridge:pw", "dev-c:"):
        devices.write_text(bad + "\n", encoding="utf-8")
        result = subprocess.run(
            ["sh", str(MOSQUITTO_DIR / "entrypoint.sh")],
            env={
                "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
                "MQTT_BRIDGE_PASSWORD": BRIDGE_PASSWORD,
                "CITYINGEST_MQTT_CONF_SRC": str(MOSQUITTO_DIR),
                "MOSQUITTO_CONF_DIR": str(conf_dir),
                "MOSQUITTO_DATA_DIR": str(tmp_path),
                "MQTT_DEVICES_SECRET": str(devices),
            },
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert result.returncode == 1, (bad, result.stdout, result.stderr)
        assert "entrypoint:" in result.stderr
        assert not (conf_dir / "passwd").exists()


def test_production_broker_saves_as_often_as_the_dev_broker() -> None:
    # The loss window of a broker crash (docs/operations.md) is the same promise in dev and production.
    conf = (MOSQUITTO_DIR / "mosquitto.conf").read_text(encoding="utf-8").splitlines()
    settings = {line.split()[0]: line.split()[1] for line in conf if line and not line.startswith("#")}
    assert settings["persistence"] == "true"
    expected = DEFAULT_PERSISTENCE.lines(Path("/mosquitto/data"))
    assert [f"{key} {settings[key]}" for key in ("autosave_interval", "autosave_on_changes")] == expected[2:]
