"""Publishing the simulated messages over MQTT (paho-mqtt 2, MQTT v5, QoS 1) and ``serve``.

The broker's acknowledgement (PUBACK) is what makes a message count in the truth. The window of
unacknowledged messages is capped: paho numbers messages 1..65535 and, past that many unacknowledged
messages, reuses ids and silently loses data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from core.errors import BrokerUnavailable
from core.readings import from_us
from core.tls import tls_context
from simulator.generate import Simulation
from simulator.model import Message
from simulator.register import issue_credentials, register_city
from simulator.settings import SimulatorSettings
from simulator.truth import Truth

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S: Final = 15.0
CLOSE_TIMEOUT_S: Final = 5.0
KEEPALIVE_S: Final = 30
DRAIN_TIMEOUT_S: Final = 10.0
FINAL_DRAIN_S: Final = 60.0
"""At the end of a run the broker may be reconnecting; paho resends what it has not acknowledged."""
PROGRESS_EVERY_S: Final = 10.0
_CONNECT_CONCURRENCY: Final = 32


class Publisher:
    """A QoS 1 MQTT publisher that reports each message once the broker has acknowledged it.

    paho's network I/O runs on the asyncio loop (socket reader/writer callbacks), not on a thread
    of its own: publishing then costs no thread hand-over, and acknowledgements are handled on the
    loop, after the publishing code has recorded the message id.
    """

    def __init__(
        self,
        settings: SimulatorSettings,
        on_ack: Callable[[Message], None],
        *,
        login: tuple[str, str] | None = None,
    ) -> None:
        """``login`` = (device id, password): connect as that device (user name and client id)."""
        self._settings = settings
        self._on_ack = on_ack
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=settings.client_id if login is None else login[0],
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        if login is not None:
            self._client.username_pw_set(*login)
        elif settings.mqtt_username is not None:
            self._client.username_pw_set(settings.mqtt_username, settings.mqtt_password)
        context = tls_context(settings)
        if context is not None:
            # The handshake happens in connect(), which runs in a thread (see start()).
            self._client.tls_set_context(context)
        # Our own window caps what is in flight; paho's cap (0 = none) would rescan every pending
        # message on each acknowledgement.
        self._client.max_inflight_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_socket_open = self._on_socket_open
        self._client.on_socket_close = self._on_socket_close
        self._client.on_socket_register_write = self._on_register_write
        self._client.on_socket_unregister_write = self._on_unregister_write
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._connected: asyncio.Future[int] | None = None
        self._closed = asyncio.Event()
        self._window: asyncio.Semaphore | None = None
        self._in_flight: dict[int, Message] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._housekeeping: asyncio.Task[None] | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._started = False
        self._stopped = False
        self.acked = 0
        self.refused = 0

    async def start(self) -> None:
        """Connect to the broker; raise :class:`BrokerUnavailable` when it cannot be reached."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._connected = self._loop.create_future()
        host, port = self._settings.mqtt_host, self._settings.mqtt_port
        try:
            # The TCP connect blocks; the CONNACK is then read on the loop.
            await asyncio.to_thread(self._client.connect, host, port, KEEPALIVE_S)
        except OSError as exc:
            raise BrokerUnavailable(f"cannot connect to MQTT broker {host}:{port}: {exc}") from exc
        self._started = True
        self._housekeeping = asyncio.create_task(self._keep_alive())
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                receive_maximum = await self._connected
        except TimeoutError:
            await self.stop()
            raise BrokerUnavailable(f"MQTT broker {host}:{port} did not accept the connection") from None
        except BrokerUnavailable:
            await self.stop()
            raise
        # The broker's Receive Maximum caps QoS 1 messages in flight; paho does not enforce it itself.
        window = min(self._settings.max_in_flight, receive_maximum)
        self._window = asyncio.Semaphore(window)
        log.info("connected to MQTT broker %s:%s (window %s)", host, port, window)

    async def publish(self, message: Message) -> None:
        """Publish one message, waiting while the unacknowledged window is full."""
        if self._window is None or self._stopped:
            raise RuntimeError("the publisher is not started")
        await self._window.acquire()
        # While disconnected paho keeps the message (MQTT_ERR_NO_CONN) and sends it on reconnection.
        info = self._client.publish(message.topic, message.payload, qos=1)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self._window.release()
            raise BrokerUnavailable(f"cannot publish: {mqtt.error_string(info.rc)}")
        self._in_flight[info.mid] = message
        self._idle.clear()

    @property
    def in_flight(self) -> int:
        """Messages published and not yet acknowledged."""
        return len(self._in_flight)

    async def drain(self, limit_s: float = DRAIN_TIMEOUT_S) -> bool:
        """Wait until every published message is acknowledged; False if ``limit_s`` passed first."""
        try:
            async with asyncio.timeout(limit_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """Disconnect; idempotent. Messages still unacknowledged are not reported."""
        if self._stopped:
            return
        self._stopped = True
        if not self._started:
            return
        for task in (self._reconnecting, self._housekeeping):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._client.disconnect() == MQTTErrorCode.MQTT_ERR_SUCCESS:
            # The DISCONNECT packet goes out through the loop's writer, then paho closes the socket.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self._closed.wait()
        if self._in_flight:
            log.warning("%s messages were never acknowledged by the broker", len(self._in_flight))

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(self.stop())

    async def _keep_alive(self) -> None:
        # paho's periodic duties (PINGREQ, keepalive timeout) when no loop_forever() drives it.
        while True:
            await asyncio.sleep(1.0)
            self._client.loop_misc()

    async def _reconnect(self) -> None:
        delay = 0.5
        while not self._stopped:
            await asyncio.sleep(delay)
            try:
                await asyncio.to_thread(self._client.reconnect)
            except OSError as exc:
                log.warning("MQTT reconnection failed (%s); retrying in %.0fs", exc, delay)
                delay = min(delay * 2, 30.0)
            else:
                return

    def _call(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn`` on the event loop: now when already there, else as soon as possible."""
        if self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    # paho callbacks: socket (un)registration and protocol events.

    def _on_socket_open(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self._call(self._add_reader, sock)

    def _add_reader(self, sock: Any) -> None:
        if self._loop is not None and sock.fileno() != -1:
            self._closed.clear()
            self._loop.add_reader(sock, self._read, sock)

    def _read(self, sock: Any) -> None:
        self._client.loop_read()
        # A TLS socket may hold decrypted bytes the file descriptor no longer signals: read them now.
        pending = getattr(sock, "pending", None)
        while pending is not None and pending() > 0 and sock.fileno() != -1:
            self._client.loop_read()

    def _on_socket_close(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self._call(self._remove_socket, sock)

    def _remove_socket(self, sock: Any) -> None:
        if self._loop is not None and sock.fileno() != -1:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        self._closed.set()

    def _on_register_write(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self._call(self._add_writer, sock)

    def _add_writer(self, sock: Any) -> None:
        if self._loop is not None and sock.fileno() != -1:
            self._loop.add_writer(sock, self._client.loop_write)

    def _on_unregister_write(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self._call(self._remove_writer, sock)

    def _remove_writer(self, sock: Any) -> None:
        if self._loop is not None and sock.fileno() != -1:
            self._loop.remove_writer(sock)

    def _on_connect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        receive_maximum = getattr(props, "ReceiveMaximum", 65535) if props is not None else 65535
        self._call(self._connect_result, reason, int(receive_maximum))

    def _connect_result(self, reason: ReasonCode, receive_maximum: int) -> None:
        if self._connected is not None and not self._connected.done():
            if reason.is_failure:
                self._connected.set_exception(BrokerUnavailable(f"MQTT connection refused: {reason}"))
            else:
                self._connected.set_result(receive_maximum)
        elif reason.is_failure:
            log.warning("MQTT reconnection refused: %s", reason)
        else:
            log.info("reconnected to the MQTT broker")

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Properties | None
    ) -> None:
        self._call(self._disconnected, reason)

    def _disconnected(self, reason: ReasonCode) -> None:
        if self._stopped or self._loop is None:
            return
        log.warning("disconnected from the MQTT broker (%s); reconnecting", reason)
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = self._loop.create_task(self._reconnect())

    def _on_publish(
        self, _client: mqtt.Client, _userdata: Any, mid: int, reason: ReasonCode, _props: Properties
    ) -> None:
        self._call(self._acked, mid, reason.is_failure)

    def _acked(self, mid: int, refused: bool) -> None:
        message = self._in_flight.pop(mid, None)
        if message is None:
            return
        if self._window is not None:
            self._window.release()
        if not self._in_flight:
            self._idle.set()
        if refused:
            # The broker refused it (quota, authorisation): it will not reach the pipeline.
            self.refused += 1
            return
        self.acked += 1
        self._on_ack(message)


class Fleet:
    """One :class:`Publisher` per device, each logged in with the device's own credentials.

    Each connection keeps its own window of unacknowledged messages (paho numbers messages per
    connection). A message of a device without credentials (left unregistered) is not published and
    not counted: such a device cannot connect to a broker that checks credentials.
    """

    def __init__(
        self, settings: SimulatorSettings, on_ack: Callable[[Message], None], passwords: dict[str, str]
    ) -> None:
        self._publishers = {
            device: Publisher(settings, on_ack, login=(device, password))
            for device, password in passwords.items()
        }
        self.skipped = 0
        """Messages of devices without credentials, never published."""

    async def start(self) -> None:
        """Connect every device (a few at a time); :class:`BrokerUnavailable` if one is refused."""
        publishers = list(self._publishers.values())
        for first in range(0, len(publishers), _CONNECT_CONCURRENCY):
            await asyncio.gather(*(p.start() for p in publishers[first : first + _CONNECT_CONCURRENCY]))
        log.info("connected %s devices with their own credentials", len(publishers))

    async def publish(self, message: Message) -> None:
        """Publish on the message's device's connection."""
        publisher = self._publishers.get(message.device_id)
        if publisher is None:
            self.skipped += 1
            return
        await publisher.publish(message)

    @property
    def in_flight(self) -> int:
        """Messages published and not yet acknowledged, over all connections."""
        return sum(p.in_flight for p in self._publishers.values())

    @property
    def acked(self) -> int:
        """Messages the broker acknowledged with success."""
        return sum(p.acked for p in self._publishers.values())

    @property
    def refused(self) -> int:
        """Messages the broker refused (e.g. not authorized): never counted in the truth."""
        return sum(p.refused for p in self._publishers.values())

    async def drain(self, limit_s: float = DRAIN_TIMEOUT_S) -> bool:
        """Wait until every connection's messages are acknowledged; False if ``limit_s`` passed first."""
        results = await asyncio.gather(*(p.drain(limit_s) for p in self._publishers.values()))
        return all(results)

    async def stop(self) -> None:
        """Disconnect every device; idempotent."""
        await asyncio.gather(*(p.stop() for p in self._publishers.values()))
        if self.skipped:
            log.info("%s messages of devices without credentials were not published", self.skipped)


async def _wait_for_wall_clock(sim_time_us: int) -> None:
    # Never publish readings from the future: the bridge rejects ts > now + 5 minutes.
    ahead = sim_time_us / 1e6 - time.time()
    if ahead > 0:
        await asyncio.sleep(ahead)


async def _publish_all(sim: Simulation, publisher: Publisher | Fleet, settings: SimulatorSettings) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    last_report = started
    for sent, message in enumerate(sim.messages()):
        delay = started + sent / settings.rate - loop.time() if settings.rate > 0 else 0.0
        if delay > 0:
            await asyncio.sleep(delay)
        elif sent % 256 == 0:
            # paho reads and writes from loop callbacks: let them run, in batches when behind.
            await asyncio.sleep(0)
        await _wait_for_wall_clock(message.sim_time_us)
        await publisher.publish(message)
        if loop.time() - last_report >= PROGRESS_EVERY_S:
            last_report = loop.time()
            log.info("published %s messages, %s acknowledged", sent + 1, publisher.acked)


async def serve(settings: SimulatorSettings) -> None:
    """Publish the simulated city until ``count`` or ``duration_s`` is reached, or until cancelled.

    The truth file (``truth``) is written at the end in every case, for the messages the broker
    acknowledged.
    """
    sim = Simulation(settings)
    truth = sim.new_truth()
    log.info("simulating %s devices from %s (seed %s)", len(sim.devices), from_us(sim.start_us), sim.seed)
    if settings.register_url is not None:
        truth.registered = (await register_city(sim)).registered
    publisher: Publisher | Fleet
    if settings.credentials_from_api:
        publisher = Fleet(settings, truth.record, await issue_credentials(settings, truth.registered or ()))
    else:
        publisher = Publisher(settings, truth.record)
    try:
        await publisher.start()
        try:
            async with asyncio.timeout(settings.duration_s):
                await _publish_all(sim, publisher, settings)
        except TimeoutError:
            log.info("duration of %ss reached", settings.duration_s)
        if not await publisher.drain(FINAL_DRAIN_S):
            log.warning("%s messages still unacknowledged after %ss", publisher.in_flight, FINAL_DRAIN_S)
    finally:
        await asyncio.shield(_finish(publisher, truth, settings))
    log.info("done: %s messages acknowledged", publisher.acked)


async def _finish(publisher: Publisher | Fleet, truth: Truth, settings: SimulatorSettings) -> None:
    # Give acknowledgements in flight a moment, so the truth matches what the broker accepted.
    if publisher.in_flight:
        await publisher.drain()
    await publisher.stop()
    if settings.truth is not None:
        await asyncio.to_thread(truth.write, settings.truth)
        log.info("wrote the truth (%s readings) to %s", truth.readings, settings.truth)
