"""The dev stack's Mosquitto: TLS only, no anonymous clients, every client authorized by dynamic security.

Also what Mosquitto 2.0.11 does on the client-certificate listener (``use_identity_as_username``): the
certificate authenticates, the dynamic security plugin only authorizes (its ``disabled`` flag and pinned
client id are not consulted), so a certificate client is revoked by deleting its dynsec client.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme

from devstack.certs import RENEW_BEFORE, SERVER_VALIDITY, ensure_certificates
from tests.secured_broker import (
    BRIDGE_USERNAME,
    PREFIX,
    SecuredBroker,
    attempt,
    secured_broker,
    start_secured_broker,
)

pytestmark = [pytest.mark.integration]

__all__ = ["secured_broker"]  # the fixture

NOT_AUTHORIZED = 0x87
NO_SUBSCRIBERS = 0x10


def _other_ca(files: Path) -> tuple[Path, Path]:
    ca = trustme.CA()
    cert, key = files / f"other-{uuid.uuid4().hex[:6]}.pem", files / "other.key"
    ca.cert_pem.write_to_path(str(cert))
    ca.private_key_pem.write_to_path(str(key))
    return cert, key


def test_certificates_are_kept_renewed_and_private(tmp_path: Path) -> None:
    certs = ensure_certificates(tmp_path / "ca")
    first = {p: p.read_bytes() for p in (certs.ca_cert, certs.ca_key, certs.server_cert, certs.server_key)}
    assert ensure_certificates(tmp_path / "ca") == certs
    assert {p: p.read_bytes() for p in first} == first  # kept across restarts
    for key in (certs.ca_key, certs.server_key):
        assert key.stat().st_mode & 0o777 == 0o600
    certs.server_cert.unlink()
    ensure_certificates(tmp_path / "ca")
    assert certs.ca_cert.read_bytes() == first[certs.ca_cert]  # a missing server certificate: CA kept
    assert certs.server_cert.read_bytes() != first[certs.server_cert]
    context = ssl.create_default_context(cafile=str(certs.ca_cert))
    context.load_cert_chain(certs.server_cert, certs.server_key)  # the pair matches
    # Close to the server certificate's expiry, a new one from the same CA.
    later = datetime.now(UTC) + SERVER_VALIDITY - RENEW_BEFORE + timedelta(days=1)
    before = certs.server_cert.read_bytes()
    ensure_certificates(tmp_path / "ca", now=later)
    assert certs.server_cert.read_bytes() != before
    assert certs.ca_cert.read_bytes() == first[certs.ca_cert]


def test_plaintext_is_refused_on_the_tls_listener(secured_broker: SecuredBroker) -> None:
    tried = attempt(secured_broker.port, login=(BRIDGE_USERNAME, secured_broker.bridge_password))
    assert tried.connack is None


def test_a_broker_certificate_is_checked_by_name(secured_broker: SecuredBroker, tmp_path: Path) -> None:
    other, _ = _other_ca(tmp_path)
    tried = attempt(
        secured_broker.port, ca_file=other, login=(BRIDGE_USERNAME, secured_broker.bridge_password)
    )
    assert tried.connack is None
    assert tried.error is not None
    assert "CERTIFICATE_VERIFY_FAILED" in tried.error


def test_anonymous_and_wrong_passwords_are_refused(secured_broker: SecuredBroker) -> None:
    ca = secured_broker.certs.ca_cert
    assert attempt(secured_broker.port, ca_file=ca).connack == NOT_AUTHORIZED
    wrong = attempt(secured_broker.port, ca_file=ca, login=(BRIDGE_USERNAME, "not-the-password"))
    assert wrong.connack == NOT_AUTHORIZED  # what Mosquitto 2.0.11 answers a wrong password with
    device = f"meter-{uuid.uuid4().hex[:6]}"
    secured_broker.add_device(device, "right")
    assert (
        attempt(secured_broker.port, ca_file=ca, login=(device, "wrong"), client_id=device).connack
        == NOT_AUTHORIZED
    )


def test_the_bridge_account_may_subscribe_to_device_topics_only(secured_broker: SecuredBroker) -> None:
    login = (BRIDGE_USERNAME, secured_broker.bridge_password)
    ca = secured_broker.certs.ca_cert
    filters = [f"{PREFIX}/#", f"$share/bridges/{PREFIX}/#", "$SYS/broker/uptime", "other/#", "#"]
    tried = attempt(secured_broker.port, ca_file=ca, login=login, subscribe=filters)
    assert tried.connack == 0
    assert tried.suback == [1, 1, 1, NOT_AUTHORIZED, NOT_AUTHORIZED]
    published = attempt(secured_broker.port, ca_file=ca, login=login, publish=f"{PREFIX}/water/x/telemetry")
    assert published.puback == NOT_AUTHORIZED


def test_a_device_publishes_to_its_own_topic_only(secured_broker: SecuredBroker) -> None:
    device = f"meter-{uuid.uuid4().hex[:6]}"
    topic = secured_broker.add_device(device, "pw-1")
    ca = secured_broker.certs.ca_cert
    own = attempt(secured_broker.port, ca_file=ca, login=(device, "pw-1"), client_id=device, publish=topic)
    assert own.puback == NO_SUBSCRIBERS  # accepted (nobody subscribed in this test)
    other = f"{PREFIX}/water/someone-else/telemetry"
    assert (
        attempt(
            secured_broker.port, ca_file=ca, login=(device, "pw-1"), client_id=device, publish=other
        ).puback
        == NOT_AUTHORIZED
    )
    # The client id is pinned to the device id.
    assert attempt(secured_broker.port, ca_file=ca, login=(device, "pw-1"), client_id="x").connack != 0
    assert attempt(
        secured_broker.port, ca_file=ca, login=(device, "pw-1"), client_id=device, subscribe=["#"]
    ).suback == [NOT_AUTHORIZED]


def test_client_certificates_authenticate_and_dynsec_authorizes(secured_broker: SecuredBroker) -> None:
    device = f"meter-{uuid.uuid4().hex[:6]}"
    topic = secured_broker.add_device(device, uuid.uuid4().hex)
    ca, port = secured_broker.certs.ca_cert, secured_broker.cert_port
    cert = secured_broker.client_cert(device)
    accepted = attempt(port, ca_file=ca, cert=cert, client_id="chosen-by-the-client", publish=topic)
    assert accepted.connack == 0
    assert accepted.puback == NO_SUBSCRIBERS
    elsewhere = attempt(port, ca_file=ca, cert=cert, publish=f"{PREFIX}/water/someone-else/telemetry")
    assert elsewhere.puback == NOT_AUTHORIZED
    # A certificate of another CA, or none, does not get through the handshake.
    foreign = secured_broker.client_cert(device, ca=_other_ca(secured_broker.files))
    assert attempt(port, ca_file=ca, cert=foreign, publish=topic).connack is None
    assert attempt(port, ca_file=ca, publish=topic).connack is None
    # A name the plugin does not know connects but may do nothing.
    stranger = attempt(port, ca_file=ca, cert=secured_broker.client_cert("nobody-" + device), publish=topic)
    assert (stranger.connack, stranger.puback) == (0, NOT_AUTHORIZED)


def test_certificate_clients_are_revoked_by_deleting_not_disabling(secured_broker: SecuredBroker) -> None:
    device = f"meter-{uuid.uuid4().hex[:6]}"
    topic = secured_broker.add_device(device, uuid.uuid4().hex)
    ca, port = secured_broker.certs.ca_cert, secured_broker.cert_port
    cert = secured_broker.client_cert(device)
    secured_broker.admin([{"command": "disableClient", "username": device}])
    # Mosquitto 2.0.11 does not ask the plugin to authenticate a certificate client: disabling is not enough.
    assert attempt(port, ca_file=ca, cert=cert, publish=topic).puback == NO_SUBSCRIBERS
    assert attempt(secured_broker.port, ca_file=ca, login=(device, "x"), client_id=device).connack != 0
    secured_broker.admin([{"command": "deleteClient", "username": device}])
    assert attempt(port, ca_file=ca, cert=cert, publish=topic).puback == NOT_AUTHORIZED


@pytest.fixture(scope="module")
def insecure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    secured = start_secured_broker(tmp_path_factory.mktemp("insecure-mqtt"), insecure=True)
    try:
        yield secured
    finally:
        secured.broker.stop()


def test_insecure_mqtt_admits_anonymous_telemetry_on_a_plain_listener(insecure_broker: SecuredBroker) -> None:
    plain = insecure_broker.plain_port
    assert plain is not None
    tried = attempt(plain, publish=f"{PREFIX}/water/exp-1/telemetry")
    assert (tried.connack, tried.puback) == (0, NO_SUBSCRIBERS)
    assert attempt(plain, publish="other/topic").puback == NOT_AUTHORIZED
    assert attempt(plain, subscribe=[f"{PREFIX}/#"]).suback == [NOT_AUTHORIZED]
