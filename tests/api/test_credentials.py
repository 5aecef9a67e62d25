"""Device MQTT credentials through the API, on a real Mosquitto with dynamic security and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import SecretStr

from api.app import create_app
from api.device_secrets import verify_password
from api.keys import create_api_key
from api.settings import ApiSettings
from tests.api.conftest import register, started
from tests.dynsec_support import DynsecBroker, MqttClient, login, running_broker

pytestmark = [pytest.mark.integration]

NOT_AUTHORIZED = 0x87
REFUSED = (0x86, 0x87)
RESTORE_WITHIN_S = 20.0


@pytest.fixture
def broker(tmp_path: Path, mqtt_prefix: str) -> Iterator[DynsecBroker]:
    """A fresh dynamic-security Mosquitto with the bridge's account."""
    with running_broker(tmp_path / "mosquitto", mqtt_prefix) as b:
        yield b


@pytest.fixture
def cred_settings(database_url: str, broker: DynsecBroker, mqtt_prefix: str) -> ApiSettings:
    return ApiSettings(
        database_url=database_url,
        kafka_bootstrap="127.0.0.1:9",
        mqtt_host="127.0.0.1",
        mqtt_port=broker.port,
        mqtt_topic_prefix=mqtt_prefix,
        dynsec_enabled=True,
        dynsec_password=SecretStr(broker.admin_password),
        dynsec_reconcile_s=1.0,
    )


async def _connected(app_client: httpx.AsyncClient) -> None:
    accounts = app_client._transport.app.state.accounts  # type: ignore[attr-defined]
    await accounts.dynsec.wait_connected(10)


@pytest.fixture
async def api(cred_settings: ApiSettings) -> AsyncIterator[httpx.AsyncClient]:
    async for c in started(create_app(cred_settings)):
        await _connected(c)
        yield c


async def issue(
    api: httpx.AsyncClient, auth: dict[str, str], device: str, **body: object
) -> dict[str, object]:
    resp = await api.post(f"/v1/devices/{device}/credentials", json=body or None, headers=auth)
    assert resp.status_code == 201, resp.text
    out: dict[str, object] = resp.json()
    return out


def bridge(broker: DynsecBroker, prefix: str) -> MqttClient:
    client = MqttClient(broker.port, "cityingest-bridge", broker.bridge_password, "bridge-test")
    assert not client.connect().is_failure
    assert not client.subscribe(f"$share/g/{prefix}/#")[0].is_failure
    return client


def code(reason: ReasonCode) -> int:
    return int(reason.value)


async def test_a_device_publishes_its_own_telemetry_and_nothing_else(
    api: httpx.AsyncClient, auth: dict[str, str], broker: DynsecBroker, mqtt_prefix: str
) -> None:
    await register(api, auth, "m-1", domain="water")
    await register(api, auth, "m-2", domain="water")
    listener = bridge(broker, mqtt_prefix)
    creds = await issue(api, auth, "m-1")
    assert creds["username"] == creds["client_id"] == creds["device_id"] == "m-1"
    assert creds["topic"] == f"{mqtt_prefix}/water/m-1/telemetry"
    assert creds["certificate_pem"] is None
    password = str(creds["password"])
    # Mosquitto 2.0.11's dynamic security answers a wrong password with 0x87 (0x86 in other versions).
    assert code(await asyncio.to_thread(login, broker.port, "m-1", password + "x")) in REFUSED
    assert code(await asyncio.to_thread(login, broker.port, "m-1", password, "other-id")) in REFUSED

    device = MqttClient(broker.port, "m-1", password, "m-1")
    assert not (await asyncio.to_thread(device.connect)).is_failure
    try:
        own = await asyncio.to_thread(device.publish, str(creds["topic"]), b'{"own": 1}')
        other = await asyncio.to_thread(
            device.publish, f"{mqtt_prefix}/water/m-2/telemetry", b'{"forged": 1}'
        )
        subscribed = await asyncio.to_thread(device.subscribe, f"{mqtt_prefix}/#")
    finally:
        device.close()
    assert not own.is_failure
    assert code(other) == NOT_AUTHORIZED
    assert [code(r) for r in subscribed] == [NOT_AUTHORIZED]
    # The bridge got the device's own message and never the forged one; issuing did not disconnect it.
    # A round trip through the broker after the publishes: what it delivered has reached the listener.
    assert not (await asyncio.to_thread(listener.subscribe, f"{mqtt_prefix}/x"))[0].is_failure
    payloads = [m.payload for m in listener.messages]
    assert not listener.disconnected.is_set()
    listener.close()
    assert payloads == [b'{"own": 1}']


async def test_an_abandoned_persistent_session_queues_nothing(
    api: httpx.AsyncClient, auth: dict[str, str], broker: DynsecBroker
) -> None:
    await register(api, auth, "m-1", domain="water")
    creds = await issue(api, auth, "m-1")
    device = MqttClient(broker.port, "m-1", str(creds["password"]), "m-1")
    assert not (await asyncio.to_thread(device.connect, clean_start=False, session_expiry_s=3600)).is_failure
    assert [code(r) for r in await asyncio.to_thread(device.subscribe, "#")] == [NOT_AUTHORIZED]
    device.close()
    sender = MqttClient(broker.port, "cityingest-bridge", broker.bridge_password, "bridge-test")
    assert not sender.connect().is_failure
    sender.close()
    back = MqttClient(broker.port, "m-1", str(creds["password"]), "m-1")
    assert not (await asyncio.to_thread(back.connect, clean_start=False, session_expiry_s=3600)).is_failure
    back.close()
    assert back.messages == []


async def test_revoking_disconnects_the_device_and_refuses_it_after(
    api: httpx.AsyncClient, auth: dict[str, str], broker: DynsecBroker
) -> None:
    await register(api, auth, "m-1", domain="water")
    await register(api, auth, "m-2", domain="water")
    creds = await issue(api, auth, "m-1")
    other = await issue(api, auth, "m-2")
    device = MqttClient(broker.port, "m-1", str(creds["password"]), "m-1")
    bystander = MqttClient(broker.port, "m-2", str(other["password"]), "m-2")
    assert not (await asyncio.to_thread(device.connect)).is_failure
    assert not (await asyncio.to_thread(bystander.connect)).is_failure
    resp = await api.delete("/v1/devices/m-1/credentials", headers=auth)
    assert resp.status_code == 204, resp.text
    assert await asyncio.to_thread(device.disconnected.wait, 5.0)
    device.close()
    assert code(await asyncio.to_thread(login, broker.port, "m-1", str(creds["password"]))) in REFUSED
    assert not bystander.disconnected.is_set()
    assert not (await asyncio.to_thread(bystander.publish, str(other["topic"]), b"{}")).is_failure
    bystander.close()
    info = (await api.get("/v1/devices/m-1/credentials", headers=auth)).json()
    assert info["revoked_at"] is not None
    assert "password" not in info
    assert (await api.delete("/v1/devices/m-1/credentials", headers=auth)).status_code == 404


async def test_rotating_refuses_the_old_password(
    api: httpx.AsyncClient, auth: dict[str, str], broker: DynsecBroker
) -> None:
    await register(api, auth, "m-1", domain="water")
    first = await issue(api, auth, "m-1")
    second = await issue(api, auth, "m-1")
    assert first["password"] != second["password"]
    assert code(await asyncio.to_thread(login, broker.port, "m-1", str(first["password"]))) in REFUSED
    assert not (await asyncio.to_thread(login, broker.port, "m-1", str(second["password"]))).is_failure
    info = (await api.get("/v1/devices/m-1/credentials", headers=auth)).json()
    assert info["generation"] == 2
    assert info["revoked_at"] is None


async def test_an_inactive_device_is_revoked_and_a_moved_device_gets_its_new_topic(
    api: httpx.AsyncClient, auth: dict[str, str], broker: DynsecBroker, mqtt_prefix: str
) -> None:
    await register(api, auth, "m-1", domain="water")
    await register(api, auth, "p-1", domain="water")
    moved = await issue(api, auth, "m-1")
    creds = await issue(api, auth, "p-1")
    await register(api, auth, "m-1", domain="power")
    device = MqttClient(broker.port, "m-1", str(moved["password"]), "m-1")
    assert not (await asyncio.to_thread(device.connect)).is_failure
    old = await asyncio.to_thread(device.publish, f"{mqtt_prefix}/water/m-1/telemetry", b"{}")
    new = await asyncio.to_thread(device.publish, f"{mqtt_prefix}/power/m-1/telemetry", b"{}")
    device.close()
    assert code(old) == NOT_AUTHORIZED
    assert not new.is_failure
    assert (
        (await api.get("/v1/devices/m-1/credentials", headers=auth))
        .json()["topic"]
        .endswith("/power/m-1/telemetry")
    )

    pump = MqttClient(broker.port, "p-1", str(creds["password"]), "p-1")
    assert not (await asyncio.to_thread(pump.connect)).is_failure
    await register(api, auth, "p-1", domain="water", status="inactive")
    assert await asyncio.to_thread(pump.disconnected.wait, 5.0)
    pump.close()
    assert code(await asyncio.to_thread(login, broker.port, "p-1", str(creds["password"]))) in REFUSED
    resp = await api.post("/v1/devices/p-1/credentials", headers=auth)
    assert resp.status_code == 409, resp.text


@pytest.mark.parametrize("state", ["kept", "lost", "stale"])
async def test_a_broker_restart_gets_every_credential_and_acl_back(
    api: httpx.AsyncClient, auth: dict[str, str], broker: DynsecBroker, mqtt_prefix: str, state: str
) -> None:
    devices = {f"d-{i}": ("water" if i % 2 else "power") for i in range(4)}
    for device, domain in devices.items():
        await register(api, auth, device, domain=domain)
    issued = {device: await issue(api, auth, device) for device in devices}
    old = broker.json_file.read_bytes()
    rotated = str(issued["d-0"]["password"])
    issued["d-0"] = await issue(api, auth, "d-0")
    assert (await api.delete("/v1/devices/d-3/credentials", headers=auth)).status_code == 204
    broker.kill()
    if state == "lost":
        broker.init(mqtt_prefix)  # the plugin's file as it was before any device: every update lost
    elif state == "stale":
        broker.json_file.write_bytes(old)  # a backup from before the rotation and the revocation
    broker.start()

    async def restored() -> bool:
        return not (
            await asyncio.to_thread(login, broker.port, "d-0", str(issued["d-0"]["password"]))
        ).is_failure

    for _ in range(int(RESTORE_WITHIN_S * 4)):
        if await restored():
            break
        await asyncio.sleep(0.25)
    for device, creds in issued.items():
        reason = await asyncio.to_thread(login, broker.port, device, str(creds["password"]))
        assert reason.is_failure == (device == "d-3"), (device, reason)
    assert (await asyncio.to_thread(login, broker.port, "d-0", rotated)).is_failure
    # With the broker's file kept nothing needed the API, whose client may still be reconnecting.
    for _ in range(int(RESTORE_WITHIN_S * 4)):
        metrics = (await api.get("/metrics", headers=auth)).text
        if "cityingest_api_dynsec_connected 1.0" in metrics:
            break
        await asyncio.sleep(0.25)
    assert "cityingest_api_dynsec_connected 1.0" in metrics
    if state != "kept":
        assert 'cityingest_api_dynsec_fixes_total{action="client"}' in metrics
    client = MqttClient(broker.port, "d-1", str(issued["d-1"]["password"]), "d-1")
    assert not (await asyncio.to_thread(client.connect)).is_failure
    mine = await asyncio.to_thread(client.publish, str(issued["d-1"]["topic"]), b"{}")
    theirs = await asyncio.to_thread(client.publish, str(issued["d-0"]["topic"]), b"{}")
    client.close()
    assert not mine.is_failure
    assert code(theirs) == NOT_AUTHORIZED


async def test_secrets_are_never_stored_logged_or_shown_again(
    api: httpx.AsyncClient,
    auth: dict[str, str],
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    await register(api, auth, "m-1", domain="water")
    creds = await issue(api, auth, "m-1")
    password = str(creds["password"])
    later = [
        (await api.get("/v1/devices/m-1/credentials", headers=auth)).text,
        (await api.get("/v1/devices/m-1", headers=auth)).text,
        (await api.get("/v1/devices", headers=auth)).text,
    ]
    assert all(password not in text for text in later)
    assert password not in caplog.text
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT row_to_json(c)::text AS doc, password_hash FROM device_credentials c")
    finally:
        await conn.close()
    assert len(rows) == 1
    assert password not in rows[0]["doc"]
    assert password.encode().hex() not in rows[0]["doc"]
    assert verify_password(password, rows[0]["password_hash"])
    assert not verify_password(password + "x", rows[0]["password_hash"])


async def test_problems(api: httpx.AsyncClient, auth: dict[str, str], database_url: str) -> None:
    await register(api, auth, "m-1", domain="water")
    reader = await create_api_key(database_url, "reader", ["metrics:read"])
    assert (await api.post("/v1/devices/m-1/credentials")).status_code == 401
    forbidden = await api.post("/v1/devices/m-1/credentials", headers={"Authorization": f"Bearer {reader}"})
    assert forbidden.status_code == 403
    assert (await api.post("/v1/devices/nope/credentials", headers=auth)).status_code == 404
    assert (await api.get("/v1/devices/m-1/credentials", headers=auth)).status_code == 404
    assert (await api.delete("/v1/devices/m-1/credentials", headers=auth)).status_code == 404
    await register(api, auth, "bad+id", domain="water")
    assert (await api.post("/v1/devices/bad+id/credentials", headers=auth)).status_code == 422
    await register(api, auth, "cityingest-bridge", domain="water")
    taken = await api.post("/v1/devices/cityingest-bridge/credentials", headers=auth)
    assert taken.status_code == 409, taken.text
    no_ca = await api.post("/v1/devices/m-1/credentials", json={"certificate": True}, headers=auth)
    assert no_ca.status_code == 409


async def test_a_broker_down_answers_503_and_the_api_stays_up(
    api: httpx.AsyncClient, auth: dict[str, str], broker: DynsecBroker
) -> None:
    await register(api, auth, "m-1", domain="water")
    broker.stop()
    resp = await api.post("/v1/devices/m-1/credentials", headers=auth)
    assert resp.status_code == 503
    assert resp.headers["content-type"] == "application/problem+json"
    assert (await api.get("/healthz")).status_code == 200
    ready = await api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["device_credentials"] == "broker unreachable"
    assert (await api.get("/v1/devices/m-1", headers=auth)).status_code == 200


async def test_dynamic_security_off_answers_503(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await register(client, auth, "m-1", domain="water")
    resp = await client.post("/v1/devices/m-1/credentials", headers=auth)
    assert resp.status_code == 503
    assert "dynamic security" in resp.json()["detail"]


@pytest.fixture
def device_ca(tmp_path: Path) -> tuple[str, str, trustme.CA]:
    ca = trustme.CA()
    cert, key = tmp_path / "device-ca.pem", tmp_path / "device-ca.key"
    ca.cert_pem.write_to_path(str(cert))
    ca.private_key_pem.write_to_path(str(key))
    return str(cert), str(key), ca


async def test_client_certificates_are_signed_by_the_device_ca(
    cred_settings: ApiSettings,
    device_ca: tuple[str, str, trustme.CA],
    auth: dict[str, str],
) -> None:
    cert_file, key_file, ca = device_ca
    settings = cred_settings.model_copy(
        update={"device_ca_cert_file": cert_file, "device_ca_key_file": key_file}
    )
    async for api in started(create_app(settings)):
        await _connected(api)
        await register(api, auth, "m-1", domain="water")
        generated = await issue(api, auth, "m-1", certificate=True)
        own_key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored")]))
            .sign(own_key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
            .decode()
        )
        from_csr = await issue(api, auth, "m-1", csr_pem=csr)
        info = (await api.get("/v1/devices/m-1/credentials", headers=auth)).json()
        bad = await api.post("/v1/devices/m-1/credentials", json={"csr_pem": "nonsense"}, headers=auth)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    for creds in (generated, from_csr):
        cert = x509.load_pem_x509_certificate(str(creds["certificate_pem"]).encode())
        cert.verify_directly_issued_by(ca_cert)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "m-1"
        assert creds["ca_certificate_pem"] == ca.cert_pem.bytes().decode()
    assert generated["private_key_pem"] is not None
    assert from_csr["private_key_pem"] is None
    csr_cert = x509.load_pem_x509_certificate(str(from_csr["certificate_pem"]).encode())
    assert csr_cert.public_key() == own_key.public_key()
    assert info["certificate_sha256"] == csr_cert.fingerprint(hashes.SHA256()).hex()
    assert info["certificate_serial"] == format(csr_cert.serial_number, "x")
    assert bad.status_code == 422


async def test_a_credential_made_with_another_key_is_reported_not_restored(
    cred_settings: ApiSettings, auth: dict[str, str], broker: DynsecBroker, mqtt_prefix: str
) -> None:
    async for api in started(create_app(cred_settings)):
        await _connected(api)
        await register(api, auth, "m-1", domain="water")
        creds = await issue(api, auth, "m-1")
    broker.kill()
    broker.init(mqtt_prefix)
    broker.start()
    broker.add_bridge_account()
    rekeyed = cred_settings.model_copy(update={"device_credential_key": SecretStr("k" * 40)})
    async for api in started(create_app(rekeyed)):
        await _connected(api)
        metrics = ""
        for _ in range(200):
            metrics = (await api.get("/metrics", headers=auth)).text
            if 'cityingest_api_dynsec_reconcile_runs_total{outcome="error"}' in metrics:
                break
            await asyncio.sleep(0.05)
    assert 'cityingest_api_dynsec_reconcile_runs_total{outcome="error"}' in metrics
    assert (await asyncio.to_thread(login, broker.port, "m-1", str(creds["password"]))).is_failure
