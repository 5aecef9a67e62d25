"""Device client certificates signed by the deployment's device CA (``cryptography``).

The subject's common name is the device id: a listener with ``use_identity_as_username`` then logs the
device in under the same account, so the same ACL applies. A generated key is an EC P-256 key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.errors import ConfigError


class InvalidCsr(ValueError):
    """The certificate signing request cannot be used (unparsable, bad signature, weak key)."""


@dataclass(frozen=True, slots=True)
class DeviceCa:
    """The device CA's certificate and key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

    @classmethod
    def load(cls, cert_file: str, key_file: str) -> DeviceCa:
        """Read the CA from PEM files; :class:`ConfigError` when they cannot be used."""
        try:
            cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
            key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load the device CA: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
            raise ConfigError("the device CA key must be an EC, RSA or Ed25519 key")
        return cls(cert, key)

    @property
    def pem(self) -> str:
        """The CA certificate, PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A signed device certificate (and the key, when the API generated it)."""

    certificate_pem: str
    private_key_pem: str | None
    serial: str
    sha256: str
    not_after: datetime


def issue(ca: DeviceCa, device_id: str, days: int, csr_pem: str | None = None) -> IssuedCertificate:
    """A client certificate for ``device_id`` valid ``days`` days, for the CSR's key or a new one."""
    private_pem: str | None = None
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    if csr_pem is None:
        key = ec.generate_private_key(ec.SECP256R1())
        public_key = key.public_key()
        private_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii")
    else:
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as exc:
            raise InvalidCsr(f"csr_pem is not a PEM certificate signing request: {exc}") from None
        if not csr.is_signature_valid:
            raise InvalidCsr("the CSR's signature does not match its key")
        csr_key = csr.public_key()
        if isinstance(csr_key, rsa.RSAPublicKey) and csr_key.key_size < 2048:
            raise InvalidCsr("RSA keys need at least 2048 bits")
        if not isinstance(csr_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
            raise InvalidCsr("the CSR's key must be an EC, RSA or Ed25519 key")
        public_key = csr_key
    now = datetime.now(UTC)
    not_after = now + timedelta(days=days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    algorithm = None if isinstance(ca.key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    signed = cert.sign(ca.key, algorithm)
    return IssuedCertificate(
        certificate_pem=signed.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        private_key_pem=private_pem,
        serial=format(signed.serial_number, "x"),
        sha256=signed.fingerprint(hashes.SHA256()).hex(),
        not_after=not_after,
    )
