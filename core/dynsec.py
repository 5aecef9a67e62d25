"""An async client of Mosquitto's dynamic security plugin (its MQTT control API), used by the API.

Commands are JSON published (MQTT 5, QoS 1) to ``$CONTROL/dynamic-security/v1``; the plugin answers on
``$CONTROL/dynamic-security/v1/response`` with the ``correlationData`` each command carried. This is a
low-volume control connection, so paho runs its own network thread (TLS handshake and reconnection
included, never on the event loop) and hands replies to the loop. Every command times out with
:class:`~core.errors.DynsecUnavailable`; an ``error`` in a reply becomes :class:`~core.errors.DynsecRefused`
(or its subclasses :class:`~core.errors.DynsecNotFound`, :class:`~core.errors.DynsecExists`).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from core.errors import DynsecExists, DynsecNotFound, DynsecRefused, DynsecUnavailable
from core.settings import MqttSettings
from core.tls import tls_context

log = logging.getLogger(__name__)

CONTROL_TOPIC: Final = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC: Final = "$CONTROL/dynamic-security/v1/response"
COMMAND_TIMEOUT_S: Final = 5.0
_KEEPALIVE_S: Final = 30
_LIST_PAGE: Final = 10_000
# The plugin's own words (Mosquitto 2.0); translated here, once, into our classes.
_NOT_FOUND: Final = ("not found", "does not exist")
_EXISTS: Final = ("already exists", "is already in")

Command = dict[str, Any]


class State(enum.Enum):
    """Where the client is in its life."""

    NEW = "new"
    STARTED = "started"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Acl:
    """One ACL of a role."""

    acltype: str
    topic: str
    allow: bool
    priority: int = 0


@dataclass(frozen=True, slots=True)
class DynsecClient:
    """A client (account) as ``listClients``/``getClient`` describe it (never with its password)."""

    username: str
    clientid: str | None
    textname: str | None
    textdescription: str | None
    roles: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DynsecRole:
    """A role and its ACLs."""

    rolename: str
    acls: tuple[Acl, ...] = field(default=())


def _client(data: Mapping[str, Any]) -> DynsecClient:
    return DynsecClient(
        username=str(data["username"]),
        clientid=data.get("clientid"),
        textname=data.get("textname"),
        textdescription=data.get("textdescription"),
        roles=tuple(str(r["rolename"]) for r in data.get("roles", ())),
    )


def _role(data: Mapping[str, Any]) -> DynsecRole:
    acls = tuple(
        Acl(str(a["acltype"]), str(a["topic"]), bool(a["allow"]), int(a.get("priority", 0)))
        for a in data.get("acls", ())
    )
    return DynsecRole(str(data["rolename"]), acls)


def refusal(command: str, error: str) -> DynsecRefused:
    """The exception for the plugin's ``error`` text of ``command``."""
    text = error.lower()
    message = f"dynamic security refused {command}: {error}"
    if any(s in text for s in _NOT_FOUND):
        return DynsecNotFound(message)
    if any(s in text for s in _EXISTS):
        return DynsecExists(message)
    return DynsecRefused(message)


class Dynsec:
    """The admin connection to the dynamic security plugin: ``start()``, commands, ``stop()``.

    ``start()`` returns at once: the connection is made (and remade after a broker restart) in the
    background; :attr:`connected` tells whether it is up, :attr:`connections` counts (re)connections.
    """

    def __init__(
        self, settings: MqttSettings, username: str, password: str, *, timeout_s: float = COMMAND_TIMEOUT_S
    ) -> None:
        self._settings = settings
        self._timeout_s = timeout_s
        self._state = State.NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[str, asyncio.Future[Command]] = {}
        self._ready = asyncio.Event()
        self.connections = 0
        """How many times the connection was (re)established and subscribed to the replies."""
        self.reconnected = asyncio.Event()
        """Set on every (re)connection; whoever keeps the broker in step clears it."""
        # A random client id: an account that connected with ours would take the session over.
        self._paho = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"cityingest-api-{secrets.token_hex(12)}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._paho.username_pw_set(username, password)
        context = tls_context(settings)
        if context is not None:
            self._paho.tls_set_context(context)
        self._paho.reconnect_delay_set(1, 5)
        self._paho.on_connect = self._on_connect
        self._paho.on_subscribe = self._on_subscribe
        self._paho.on_disconnect = self._on_disconnect
        self._paho.on_message = self._on_message

    @property
    def connected(self) -> bool:
        """Whether commands can be sent now."""
        return self._ready.is_set()

    async def start(self) -> None:
        """Start connecting in the background; a second call is refused."""
        if self._state is not State.NEW:
            raise RuntimeError(f"the dynamic security client is {self._state.value}")
        self._loop = asyncio.get_running_loop()
        self._state = State.STARTED
        self._paho.connect_async(self._settings.mqtt_host, self._settings.mqtt_port, _KEEPALIVE_S)
        self._paho.loop_start()

    async def stop(self) -> None:
        """Disconnect and stop the network thread. Idempotent."""
        if self._state is not State.STARTED:
            self._state = State.CLOSED
            return
        self._state = State.CLOSED
        self._ready.clear()
        self._paho.disconnect()
        await asyncio.shield(asyncio.to_thread(self._paho.loop_stop))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(DynsecUnavailable("the dynamic security client stopped"))
        self._pending.clear()

    async def __aenter__(self) -> Dynsec:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_connected(self, timeout_s: float) -> None:
        """Wait until the connection is up; :class:`DynsecUnavailable` after ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._ready.wait()
        except TimeoutError:
            raise self._unavailable(f"no connection within {timeout_s:g} s") from None

    async def execute(self, commands: Sequence[Command]) -> list[Command]:
        """Send ``commands`` in one message; their replies in order, or the first refusal raised."""
        if self._state is not State.STARTED or self._loop is None:
            raise DynsecUnavailable("the dynamic security client is not started")
        if not self._ready.is_set():
            raise self._unavailable("not connected")
        futures: list[asyncio.Future[Command]] = []
        tagged: list[Command] = []
        for command in commands:
            tag = secrets.token_hex(8)
            future: asyncio.Future[Command] = self._loop.create_future()
            self._pending[tag] = future
            futures.append(future)
            tagged.append({**command, "correlationData": tag})
        try:
            info = self._paho.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=1)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                raise self._unavailable(paho.error_string(info.rc))
            try:
                async with asyncio.timeout(self._timeout_s):
                    replies = list(await asyncio.gather(*futures))
            except TimeoutError:
                names = ", ".join(str(c.get("command")) for c in commands)
                raise self._unavailable(f"no reply to {names} within {self._timeout_s:g} s") from None
        finally:
            for command in tagged:
                self._pending.pop(command["correlationData"], None)
        for reply in replies:
            if "error" in reply:
                raise refusal(str(reply.get("command")), str(reply["error"]))
        return replies

    async def command(self, command: str, **arguments: Any) -> Command:
        """One command; its reply's ``data`` (empty when it has none)."""
        reply = (await self.execute([{"command": command, **arguments}]))[0]
        data: Command = reply.get("data") or {}
        return data

    # The commands cityingest uses.

    async def create_client(
        self,
        username: str,
        password: str,
        *,
        clientid: str | None = None,
        textname: str | None = None,
        textdescription: str | None = None,
        roles: Sequence[str] = (),
    ) -> None:
        """``createClient`` (the plugin hashes the password itself)."""
        args: Command = {
            "username": username,
            "password": password,
            "roles": [{"rolename": r} for r in roles],
        }
        for key, value in (
            ("clientid", clientid),
            ("textname", textname),
            ("textdescription", textdescription),
        ):
            if value is not None:
                args[key] = value
        await self.command("createClient", **args)

    async def delete_client(self, username: str) -> None:
        """``deleteClient``: the broker disconnects a connected client of that account."""
        await self.command("deleteClient", username=username)

    async def set_client_password(self, username: str, password: str) -> None:
        """``setClientPassword``."""
        await self.command("setClientPassword", username=username, password=password)

    async def disable_client(self, username: str) -> None:
        """``disableClient``: the account can no longer connect, a connected client is disconnected."""
        await self.command("disableClient", username=username)

    async def enable_client(self, username: str) -> None:
        """``enableClient``."""
        await self.command("enableClient", username=username)

    async def add_client_role(self, username: str, rolename: str, priority: int = -1) -> None:
        """``addClientRole``."""
        await self.command("addClientRole", username=username, rolename=rolename, priority=priority)

    async def get_client(self, username: str) -> DynsecClient:
        """``getClient``; :class:`DynsecNotFound` when there is none."""
        return _client((await self.command("getClient", username=username))["client"])

    async def list_clients(self) -> list[DynsecClient]:
        """``listClients`` (verbose): every client with its text name, description and roles."""
        data = await self.command("listClients", verbose=True, count=_LIST_PAGE, offset=0)
        return [_client(c) for c in data.get("clients", ())]

    async def create_role(self, rolename: str, acls: Sequence[Acl] = ()) -> None:
        """``createRole`` with its ACLs."""
        await self.command(
            "createRole",
            rolename=rolename,
            acls=[
                {"acltype": a.acltype, "topic": a.topic, "allow": a.allow, "priority": a.priority}
                for a in acls
            ],
        )

    async def delete_role(self, rolename: str) -> None:
        """``deleteRole``."""
        await self.command("deleteRole", rolename=rolename)

    async def add_role_acl(self, rolename: str, acl: Acl) -> None:
        """``addRoleACL``."""
        await self.command(
            "addRoleACL",
            rolename=rolename,
            acltype=acl.acltype,
            topic=acl.topic,
            allow=acl.allow,
            priority=acl.priority,
        )

    async def remove_role_acl(self, rolename: str, acltype: str, topic: str) -> None:
        """``removeRoleACL``."""
        await self.command("removeRoleACL", rolename=rolename, acltype=acltype, topic=topic)

    async def get_role(self, rolename: str) -> DynsecRole:
        """``getRole``; :class:`DynsecNotFound` when there is none."""
        return _role((await self.command("getRole", rolename=rolename))["role"])

    async def list_roles(self) -> list[DynsecRole]:
        """``listRoles`` (verbose): every role with its ACLs."""
        data = await self.command("listRoles", verbose=True, count=_LIST_PAGE, offset=0)
        return [_role(r) for r in data.get("roles", ())]

    async def set_default_acl_access(self, access: Mapping[str, bool]) -> None:
        """``setDefaultACLAccess``, e.g. ``{"publishClientSend": False, "subscribe": False}``."""
        await self.command(
            "setDefaultACLAccess", acls=[{"acltype": k, "allow": v} for k, v in access.items()]
        )

    # paho callbacks, on paho's network thread: hand everything to the loop.

    def _unavailable(self, why: str) -> DynsecUnavailable:
        where = f"{self._settings.mqtt_host}:{self._settings.mqtt_port}"
        return DynsecUnavailable(f"the broker's dynamic security at {where}: {why}")

    def _call(self, fn: Any, *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_connect(
        self, client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Properties | None
    ) -> None:
        if reason.is_failure:
            log.warning("the broker refused the dynamic security admin connection: %s", reason)
            return
        client.subscribe(RESPONSE_TOPIC, qos=1)

    def _on_subscribe(
        self, _client: paho.Client, _userdata: Any, _mid: int, reasons: list[ReasonCode], _props: Any
    ) -> None:
        if any(r.is_failure for r in reasons):
            log.error("the dynamic security admin account may not read %s: %s", RESPONSE_TOPIC, reasons)
            return
        self._call(self._subscribed)

    def _subscribed(self) -> None:
        self.connections += 1
        self._ready.set()
        self.reconnected.set()
        log.info("connected to the broker's dynamic security (%s)", self.connections)

    def _on_disconnect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        self._call(self._disconnected, str(reason))

    def _disconnected(self, reason: str) -> None:
        if self._state is State.STARTED and self._ready.is_set():
            log.warning("lost the broker's dynamic security connection (%s); reconnecting", reason)
        self._ready.clear()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self._unavailable(f"disconnected ({reason})"))

    def _on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            replies = json.loads(message.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed dynamic security reply")
            return
        self._call(self._resolve, replies)

    def _resolve(self, replies: list[Command]) -> None:
        for reply in replies:
            future = self._pending.get(str(reply.get("correlationData")))
            if future is not None and not future.done():
                future.set_result(reply)
