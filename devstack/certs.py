"""The dev stack's private certificate authority and the broker's server certificate (``<state>/ca/``).

One CA signs the broker's certificate (for ``localhost``, ``127.0.0.1`` and ``::1``) and, through the
API (``CITYINGEST_DEVICE_CA_CERT_FILE``/``_KEY_FILE``), the devices' client certificates. Both are kept
across runs, so a device configured once keeps working, and made again when missing, unreadable or
within :data:`RENEW_BEFORE` of expiry (a new CA invalidates every certificate the old one signed).
Private keys are written with mode 0600 from the start.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY: Final = timedelta(days=3650)
SERVER_VALIDITY: Final = timedelta(days=365)
RENEW_BEFORE: Final = timedelta(days=30)
SERVER_NAMES: Final = ("localhost",)
SERVER_ADDRESSES: Final = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class DevCertificates:
    """Paths of the CA and server certificate and key files in ``directory``."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        """The CA certificate (PEM): what clients trust, and the device CA of the API."""
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        """The CA's private key (PEM, 0600): the API signs device certificates with it."""
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        """The broker's certificate (PEM)."""
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        """The broker's private key (PEM, 0600)."""
        return self.directory / "server.key"


def ensure_certificates(directory: Path, now: datetime | None = None) -> DevCertificates:
    """The CA and server certificate in ``directory``: kept while valid, made when missing or expiring."""
    now = now or datetime.now(UTC)
    certs = DevCertificates(directory)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    ca = _load_valid(certs.ca_cert, certs.ca_key, now)
    if ca is None:
        ca = _make_ca(now)
        _write(certs.ca_key, certs.ca_cert, *ca)
    server = _load_valid(certs.server_cert, certs.server_key, now)
    if server is None or not _issued_by(server[0], ca[0]):
        _write(certs.server_key, certs.server_cert, *_make_server(ca, now))
    return certs


Pair = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def _load_valid(cert_path: Path, key_path: Path, now: datetime) -> Pair | None:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or cert.public_key() != key.public_key():
        return None
    if cert.not_valid_after_utc - RENEW_BEFORE <= now or cert.not_valid_before_utc > now:
        return None
    return cert, key


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _make_ca(now: datetime) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cityingest dev CA")])
    cert = (
        _builder(name, name, key.public_key(), now, CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_server(ca: Pair, now: datetime) -> Pair:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVER_NAMES]
    alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in SERVER_ADDRESSES]
    cert = (
        _builder(name, ca_cert.subject, key.public_key(), now, SERVER_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime,
    valid: timedelta,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))  # a client whose clock is a little behind
        .not_valid_after(now + valid)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write(key_path: Path, cert_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    """Write the key (0600 from the start) and then the certificate, each replacing the old file at once."""
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private(key_path, key_pem)
    tmp = cert_path.with_suffix(".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tmp.replace(cert_path)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (mode 0600 before any byte is written)."""
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    tmp.replace(path)
