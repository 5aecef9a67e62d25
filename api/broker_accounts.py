"""The broker's device accounts (dynamic security), kept in step with the database.

Each live credential of an active device is one dynamic security client ``username = clientid = device
id`` with text name ``cityingest device`` and a description naming the credential, and one role
``cityingest-device:<id>`` with a single ACL: publish to the device's telemetry topic. Nothing else may
be done by a device: the broker's default ACL denies publishing and subscribing. Only clients with that
text name and roles with that prefix are ever touched here; the admin and bridge accounts never are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from api import credential_queries as q
from api.device_secrets import DerivationKey
from core.dynsec import Acl, Dynsec, DynsecClient, DynsecRole
from core.errors import CityIngestError, DynsecNotFound, DynsecRefused, DynsecUnavailable
from core.topics import telemetry_topic
from core.types import DeviceStatus

log = logging.getLogger(__name__)

TEXTNAME: Final = "cityingest device"
ROLE_PREFIX: Final = "cityingest-device:"
PUBLISH: Final = "publishClientSend"


class UsernameTaken(CityIngestError):
    """The device id is the user name of a broker account that is not a device's (admin, bridge)."""


def role_name(device_id: str) -> str:
    """The role of ``device_id``'s account."""
    return f"{ROLE_PREFIX}{device_id}"


@dataclass(frozen=True, slots=True)
class Account:
    """What the broker must hold for one live credential (never the password: it is derived on use)."""

    device_id: str
    topic: str
    credential_id: int
    generation: int
    nonce: bytes
    key_id: str

    @property
    def role(self) -> str:
        """The account's role."""
        return role_name(self.device_id)

    @property
    def acl(self) -> Acl:
        """The one ACL of the role."""
        return Acl(PUBLISH, self.topic, True)

    @property
    def description(self) -> str:
        """The client's text description: names the credential, so a stale broker account is noticed."""
        return f"credential {self.credential_id} generation {self.generation}"

    def holds(self, client: DynsecClient) -> bool:
        """Whether the broker's ``client`` is this credential's account."""
        return (
            client.textname == TEXTNAME
            and client.clientid == self.device_id
            and client.textdescription == self.description
            and client.roles == (self.role,)
        )

    @classmethod
    def of(cls, row: Any, domain: str, prefix: str) -> Account:
        """The account of a ``device_credentials`` row for a device in ``domain``."""
        device_id = str(row["device_id"])
        return cls(
            device_id=device_id,
            topic=telemetry_topic(prefix, domain, device_id),
            credential_id=int(row["credential_id"]),
            generation=int(row["generation"]),
            nonce=bytes(row["nonce"]),
            key_id=str(row["key_id"]),
        )


@dataclass(slots=True)
class Reconciled:
    """What one reconciliation pass changed, by action."""

    fixes: dict[str, int]
    unrestorable: int = 0
    skipped: bool = False


class BrokerAccounts:
    """Creates, replaces and removes device accounts through :class:`Dynsec`; reconciles them all."""

    def __init__(
        self,
        dynsec: Dynsec,
        key: DerivationKey,
        prefix: str,
        on_fix: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.dynsec = dynsec
        self.key = key
        self.prefix = prefix
        self._on_fix = on_fix

    async def check_username(self, device_id: str) -> None:
        """:class:`UsernameTaken` when ``device_id`` names an account that is not a device's."""
        client = await _absent_is_none(self.dynsec.get_client(device_id))
        if client is not None and client.textname != TEXTNAME:
            raise UsernameTaken(f"the broker account {device_id!r} is not a device's")

    async def install(self, account: Account, password: str) -> None:
        """Put ``account`` in the broker with ``password``: a previous account of the device (and its
        connected client) is removed first, so a rotated password stops working at once."""
        role = await _absent_is_none(self.dynsec.get_role(account.role))
        await self._ensure_role(account, role)
        with contextlib.suppress(DynsecNotFound):
            await self.dynsec.delete_client(account.device_id)
        await self._create_client(account, password)

    async def remove(self, device_id: str) -> None:
        """Remove the device's account and role (a connected client is disconnected). Idempotent."""
        client = await _absent_is_none(self.dynsec.get_client(device_id))
        if client is not None and client.textname == TEXTNAME:
            with contextlib.suppress(DynsecNotFound):
                await self.dynsec.delete_client(device_id)
        with contextlib.suppress(DynsecNotFound):
            await self.dynsec.delete_role(role_name(device_id))

    async def set_topic(self, account: Account) -> None:
        """Make the role's ACL the device's current topic (after its domain changed)."""
        await self._ensure_role(account, await _absent_is_none(self.dynsec.get_role(account.role)))

    async def reconcile(self, pool: asyncpg.Pool) -> Reconciled:
        """One pass: the broker's device accounts made equal to the live credentials in the database."""
        done = Reconciled({})
        async with q.try_locked(pool) as conn:
            if conn is None:
                done.skipped = True
                return done
            rows = await q.wanted(conn)
            clients = {c.username: c for c in await self.dynsec.list_clients()}
            roles = {
                r.rolename: r for r in await self.dynsec.list_roles() if r.rolename.startswith(ROLE_PREFIX)
            }
            wanted = {str(r["device_id"]): Account.of(r, str(r["domain"]), self.prefix) for r in rows}
            for account in wanted.values():
                role = roles.get(account.role)
                if role is None or role.acls != (account.acl,):
                    await self._ensure_role(account, role)
                    self._fixed(done, "role")
                client = clients.get(account.device_id)
                if client is not None and client.textname != TEXTNAME:
                    log.error(
                        "device %r has the user name of a broker account that is no device's",
                        account.device_id,
                    )
                    done.unrestorable += 1
                    continue
                if client is not None and account.holds(client):
                    continue
                if account.key_id != self.key.key_id:
                    log.error(
                        "cannot restore the broker account of device %r: its password was derived with "
                        "another CITYINGEST_DEVICE_CREDENTIAL_KEY; issue it new credentials",
                        account.device_id,
                    )
                    done.unrestorable += 1
                    continue
                if client is not None:
                    with contextlib.suppress(DynsecNotFound):
                        await self.dynsec.delete_client(account.device_id)
                await self._create_client(account, self.key.password(account.device_id, account.nonce))
                self._fixed(done, "client")
            for username, client in clients.items():
                if client.textname == TEXTNAME and username not in wanted:
                    with contextlib.suppress(DynsecNotFound):
                        await self.dynsec.delete_client(username)
                    self._fixed(done, "extra_client")
            for rolename in roles:
                if rolename.removeprefix(ROLE_PREFIX) not in wanted:
                    with contextlib.suppress(DynsecNotFound):
                        await self.dynsec.delete_role(rolename)
                    self._fixed(done, "extra_role")
        return done

    def _fixed(self, done: Reconciled, action: str) -> None:
        done.fixes[action] = done.fixes.get(action, 0) + 1
        self._on_fix(action)

    async def _ensure_role(self, account: Account, role: DynsecRole | None) -> None:
        if role is None:
            await self.dynsec.create_role(account.role, [account.acl])
            return
        for acl in role.acls:
            if acl != account.acl:
                await self.dynsec.remove_role_acl(account.role, acl.acltype, acl.topic)
        if account.acl not in role.acls:
            await self.dynsec.add_role_acl(account.role, account.acl)

    async def _create_client(self, account: Account, password: str) -> None:
        await self.dynsec.create_client(
            account.device_id,
            password,
            clientid=account.device_id,
            textname=TEXTNAME,
            textdescription=account.description,
            roles=[account.role],
        )


async def _absent_is_none(call: Awaitable[Any]) -> Any:
    try:
        return await call
    except DynsecNotFound:
        return None


async def follow_device(accounts: BrokerAccounts | None, pool: asyncpg.Pool, device_id: str) -> None:
    """After a device was updated: revoke its credential unless it is active, else follow its domain."""
    async with q.locked(pool) as conn:
        device = await q.device_for_update(conn, device_id)
        if device is None:
            return
        if device["status"] != DeviceStatus.ACTIVE.value:
            revoked = await q.revoke(conn, device_id)
            if revoked and accounts is not None:
                try:
                    await accounts.remove(device_id)
                except (DynsecUnavailable, DynsecRefused) as exc:
                    log.warning("device %r revoked; the reconciler tells the broker (%s)", device_id, exc)
            return
        row = await q.live(conn, device_id)
        if row is not None and accounts is not None:
            try:
                await accounts.set_topic(Account.of(row, str(device["domain"]), accounts.prefix))
            except (DynsecUnavailable, DynsecRefused) as exc:
                log.warning("device %r moved; the reconciler tells the broker (%s)", device_id, exc)


async def reconcile_forever(
    accounts: BrokerAccounts,
    pool: asyncpg.Pool,
    interval_s: float,
    on_run: Callable[[str], None],
) -> None:
    """Reconcile every ``interval_s`` and at once after each (re)connection to the broker, until cancelled.

    A failed pass is logged and counted, never fatal: the API keeps serving while the broker is away.
    """
    dynsec = accounts.dynsec
    while True:
        dynsec.reconnected.clear()
        outcome = "ok"
        if not dynsec.connected:
            outcome = "unavailable"
        else:
            try:
                done = await accounts.reconcile(pool)
            except CityIngestError as exc:
                outcome = "unavailable" if exc.retriable else "error"
                log.warning("reconciling the broker's device accounts failed: %s", exc)
            except Exception:
                outcome = "error"
                log.exception("reconciling the broker's device accounts failed")
            else:
                if done.skipped:
                    outcome = "skipped"
                elif done.unrestorable:
                    outcome = "error"
                if done.fixes:
                    log.info("reconciled the broker's device accounts: %s", done.fixes)
        on_run(outcome)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval_s):
                await dynsec.reconnected.wait()
