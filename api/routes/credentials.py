"""``/v1/devices/{id}/credentials``: a device's MQTT credentials, issued, shown (metadata) and revoked.

The password (and a generated private key) is in the answer of the POST that issued it and nowhere
else: the database keeps a nonce and a scrypt hash (see :mod:`api.device_secrets`). The broker is told
through its dynamic security plugin before the answer; the reconciler repairs what it may have lost.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, Response
from pydantic import BaseModel, Field

from api import credential_queries as q
from api.auth import Principal, Scope, require
from api.broker_accounts import Account, BrokerAccounts, UsernameTaken
from api.deps import PoolDep, SettingsDep
from api.device_certs import DeviceCa, InvalidCsr, IssuedCertificate, issue
from api.device_secrets import hash_password, new_nonce
from api.problems import Problem
from api.routes.devices import DeviceId
from core.errors import DynsecRefused, DynsecUnavailable
from core.topics import telemetry_topic
from core.types import DeviceStatus

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/devices", tags=["credentials"])

Writer = Annotated[Principal, Depends(require(Scope.DEVICES_WRITE))]
_NOT_A_LEVEL = frozenset("/+#")


class CredentialsIn(BaseModel):
    """Options of a credential: a client certificate too (generated key, or for the key of a CSR)."""

    certificate: bool = Field(
        False, description="Also issue a client certificate (CN = device id) signed by the device CA."
    )
    csr_pem: str | None = Field(
        None,
        max_length=16_384,
        description="A PEM certificate signing request: the certificate is issued for its key (implies "
        "certificate) and no private key is returned.",
    )


class IssuedCredentials(BaseModel):
    """A device's new MQTT login; the password and private key are shown here, once."""

    device_id: str
    username: str = Field(description="MQTT user name: the device id.")
    client_id: str = Field(description="MQTT client id the device must connect with: the device id.")
    password: str = Field(description="MQTT password, shown only in this answer.")
    issued_at: datetime
    topic: str = Field(description="The only topic the device may publish to (it may subscribe to none).")
    certificate_pem: str | None = Field(description="Client certificate, when one was asked for.")
    private_key_pem: str | None = Field(description="Its private key, when the API generated it (no CSR).")
    ca_certificate_pem: str | None = Field(description="The device CA's certificate, with a certificate.")


class CredentialsInfo(BaseModel):
    """What is known about a device's newest credential; never the secret."""

    device_id: str
    username: str
    client_id: str
    topic: str
    generation: int = Field(description="1 for the first credential, +1 on every rotation.")
    issued_at: datetime
    revoked_at: datetime | None = Field(description="When it was revoked (null while it is valid).")
    certificate_serial: str | None = Field(description="Hexadecimal serial of its client certificate.")
    certificate_sha256: str | None = Field(description="SHA-256 fingerprint of its client certificate.")
    certificate_not_after: datetime | None


def _accounts(request: Request) -> BrokerAccounts:
    accounts: BrokerAccounts | None = request.app.state.accounts
    if accounts is None:
        raise Problem(
            503,
            "Device credentials unavailable",
            "device credentials need the broker's dynamic security: set CITYINGEST_DYNSEC_ENABLED=true "
            "and CITYINGEST_DYNSEC_PASSWORD",
        )
    return accounts


AccountsDep = Annotated[BrokerAccounts, Depends(_accounts)]


def broker_down(exc: Exception, detail: str = "") -> Problem:
    """The 503 problem of a broker (dynamic security) that cannot be told."""
    log.warning("the broker's dynamic security is unavailable: %s", exc)
    return Problem(
        503,
        "Broker unavailable",
        detail or "the MQTT broker's dynamic security did not answer; nothing was changed, retry shortly",
        headers={"Retry-After": "5"},
    )


def _unknown(device_id: str) -> Problem:
    return Problem(404, "Unknown device", f"no device {device_id!r}; register it with PUT /v1/devices/{{id}}")


@router.post(
    "/{device_id}/credentials",
    status_code=201,
    responses={
        404: {"description": "Unknown device"},
        409: {"description": "The device is not active, or its id names a broker account of another kind"},
        422: {"description": "The device id cannot be an MQTT user name and topic level, or a bad CSR"},
        503: {"description": "Dynamic security is off or the broker did not answer"},
    },
)
async def issue_credentials(
    _: Writer,
    request: Request,
    pool: PoolDep,
    settings: SettingsDep,
    accounts: AccountsDep,
    device_id: DeviceId,
    body: Annotated[CredentialsIn | None, Body()] = None,
) -> IssuedCredentials:
    """Issue the device's MQTT credentials (a password, optionally a client certificate); rotate them.

    The answer is the only place the password (and a generated key) is ever shown. Issuing again
    replaces the credential: the old password stops working and a client connected with it is
    disconnected. The device may connect within 5 seconds, without a broker restart.
    """
    options = body or CredentialsIn()
    if _NOT_A_LEVEL & set(device_id):
        raise Problem(
            422,
            "Device id unusable for MQTT",
            "a device id with '/', '+' or '#' cannot be an MQTT topic level; register the device under an id "
            "without them",
            parameter="device_id",
        )
    certificate: IssuedCertificate | None = None
    ca: DeviceCa | None = request.app.state.device_ca
    if options.certificate or options.csr_pem is not None:
        if ca is None:
            raise Problem(
                409,
                "No device CA",
                "this deployment has no device CA (CITYINGEST_DEVICE_CA_CERT_FILE and "
                "CITYINGEST_DEVICE_CA_KEY_FILE): ask for a password only",
            )
        try:
            certificate = await asyncio.to_thread(
                issue, ca, device_id, settings.device_cert_days, options.csr_pem
            )
        except InvalidCsr as exc:
            raise Problem(422, "Invalid CSR", str(exc), parameter="csr_pem") from None
    nonce = new_nonce()
    password = accounts.key.password(device_id, nonce)
    password_hash = await asyncio.to_thread(hash_password, password)
    try:
        await accounts.check_username(device_id)
        async with q.locked(pool) as conn:
            device = await q.device_for_update(conn, device_id)
            if device is None:
                raise _unknown(device_id)
            if device["status"] != DeviceStatus.ACTIVE.value:
                raise Problem(
                    409,
                    "Device not active",
                    f"device {device_id!r} is {device['status']}; set its status to active with PUT first",
                )
            await q.revoke(conn, device_id)
            cert = (certificate.serial, certificate.sha256, certificate.not_after) if certificate else None
            row = await q.insert(conn, device_id, nonce, password_hash, accounts.key.key_id, cert)
            # Told before the commit: if the broker cannot be told, nothing changed anywhere.
            await accounts.install(Account.of(row, str(device["domain"]), accounts.prefix), password)
    except UsernameTaken:
        raise Problem(
            409,
            "User name taken",
            f"{device_id!r} is the user name of a broker account that is not a device's",
        ) from None
    except (DynsecUnavailable, DynsecRefused) as exc:
        raise broker_down(exc) from None
    return IssuedCredentials(
        device_id=device_id,
        username=device_id,
        client_id=device_id,
        password=password,
        issued_at=row["issued_at"],
        topic=telemetry_topic(accounts.prefix, str(device["domain"]), device_id),
        certificate_pem=certificate.certificate_pem if certificate else None,
        private_key_pem=certificate.private_key_pem if certificate else None,
        ca_certificate_pem=ca.pem if certificate and ca else None,
    )


@router.get("/{device_id}/credentials", responses={404: {"description": "No credential was ever issued"}})
async def get_credentials(
    _: Writer, pool: PoolDep, accounts: AccountsDep, device_id: DeviceId
) -> CredentialsInfo:
    """The device's newest credential: when it was issued and revoked, its certificate; never the secret."""
    row = await q.latest(pool, device_id)
    if row is None:
        raise Problem(404, "No credentials", f"device {device_id!r} has no credentials; issue them with POST")
    domain = await pool.fetchval("SELECT domain FROM devices WHERE device_id = $1", device_id)
    return _info(row, telemetry_topic(accounts.prefix, str(domain), device_id))


def _info(row: Any, topic: str) -> CredentialsInfo:
    return CredentialsInfo(
        device_id=row["device_id"],
        username=row["device_id"],
        client_id=row["device_id"],
        topic=topic,
        generation=row["generation"],
        issued_at=row["issued_at"],
        revoked_at=row["revoked_at"],
        certificate_serial=row["certificate_serial"],
        certificate_sha256=row["certificate_sha256"],
        certificate_not_after=row["certificate_not_after"],
    )


@router.delete(
    "/{device_id}/credentials",
    status_code=204,
    responses={
        404: {"description": "The device has no valid credential"},
        503: {"description": "Revoked in the database; the broker will be told when it is reachable"},
    },
)
async def revoke_credentials(
    _: Writer, pool: PoolDep, accounts: AccountsDep, device_id: DeviceId
) -> Response:
    """Revoke the device's credentials: the broker disconnects it within 5 seconds and refuses it after.

    A revocation always holds: when the broker cannot be told now (503), the reconciler removes the
    account as soon as it is reachable again.
    """
    unreachable: Exception | None = None
    async with q.locked(pool) as conn:
        if not await q.revoke(conn, device_id):
            raise Problem(404, "No credentials", f"device {device_id!r} has no valid credentials to revoke")
        try:
            await accounts.remove(device_id)
        except (DynsecUnavailable, DynsecRefused) as exc:
            unreachable = exc
    if unreachable is not None:
        raise broker_down(
            unreachable,
            "the credentials are revoked in the database, but the broker did not answer: the reconciler "
            "removes the device's account as soon as the broker is reachable",
        )
    return Response(status_code=204)
