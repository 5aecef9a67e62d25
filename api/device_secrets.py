"""Device MQTT passwords: derived from a key and a stored nonce, hashed with scrypt, never stored.

A password is ``base64url(HMAC-SHA256(key, "cityingest-device-password" | device id | nonce))``: 256
bits, shown once to whoever issued it. The database keeps the nonce, the id of the key (a fingerprint)
and a scrypt hash with a per-secret salt; the key lives only in the API's settings. So a broker that lost
its accounts gets every password back from the reconciler, while the database alone reveals none.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final

NONCE_BYTES: Final = 32
SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
_SALT_BYTES: Final = 16
_CONTEXT: Final = b"cityingest-device-password"


@dataclass(frozen=True, slots=True)
class DerivationKey:
    """The key device passwords are derived from, and its public fingerprint (``key_id``)."""

    key: bytes

    @classmethod
    def from_settings(cls, credential_key: str | None, dynsec_password: str) -> DerivationKey:
        """The configured key, else one derived from the dynamic security admin password."""
        if credential_key is not None:
            return cls(hashlib.sha256(credential_key.encode()).digest())
        return cls(hmac.new(dynsec_password.encode(), b"cityingest device credential key", "sha256").digest())

    @property
    def key_id(self) -> str:
        """A fingerprint naming the key without revealing it."""
        return hmac.new(self.key, b"cityingest key id", "sha256").hexdigest()[:16]

    def password(self, device_id: str, nonce: bytes) -> str:
        """The password of ``device_id``'s credential with ``nonce``."""
        message = _CONTEXT + b"\x00" + device_id.encode() + b"\x00" + nonce
        digest = hmac.new(self.key, message, "sha256").digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_nonce() -> bytes:
    """A fresh random nonce for a new credential."""
    return secrets.token_bytes(NONCE_BYTES)


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` of ``password`` with a fresh salt (slow on purpose: run it in a thread)."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches the ``scrypt$...`` hash ``stored``."""
    try:
        kdf, n, r, p, salt, digest = stored.split("$")
        if kdf != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)
