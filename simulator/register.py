"""Registering the simulated city in the device registry (``PUT /v1/devices/{id}``) before publishing.

A real city registers its devices from an asset register, and only a few new or rogue devices show up
unregistered: ``unregistered_share`` of the devices, chosen by the seed, are left out for that reason
(the consumer inserts them as ``unregistered`` when they first report). Registration is idempotent: a
device the registry already describes as we would is not written again, and an earlier registration
time is kept, so that a re-run never shortens the history completeness is computed over.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote

import httpx

from core.errors import CityIngestError, ConfigError, ServiceUnavailable
from core.readings import from_us
from core.types import DeviceStatus
from simulator.generate import Simulation
from simulator.model import Device
from simulator.settings import SimulatorSettings

log = logging.getLogger(__name__)

CONCURRENCY: Final = 8
"""Requests in flight: thousands of devices register in seconds without crowding the API's pool."""
REQUEST_TIMEOUT_S: Final = 10.0
RETRY_WITHIN_S: Final = 60.0
"""How long an unreachable or unavailable API is retried: it may be starting next to the simulator."""
_RETRY_STATUS: Final = frozenset({429, 502, 503, 504})
_FIRST_DELAY_S: Final = 0.2
_MAX_DELAY_S: Final = 5.0
CITY_CENTRE: Final = (52.09, 5.12)
_DISTRICT_RING_DEG: Final = 0.03
"""District centres lie on a ring about 3 km around the city centre..."""
_SITE_SPREAD_DEG: Final = 0.01
"""...and a district's sites within about 1 km of its centre."""
_SITE_KIND: Final = {
    "building": "building",
    "water": "measuring point",
    "power": "substation",
    "environment": "sensor mast",
}
_KEY_HINT: Final = (
    "create one with `cityingest apikey create --name simulator --scope devices:write metrics:read` "
    "and pass it with --api-key-file"
)


class RegistrationError(CityIngestError):
    """The API refused to register a device (key, scope or metadata): retrying will not help."""


class ApiUnavailable(ServiceUnavailable):
    """The API did not answer, or answered that it is unavailable, for the whole retry period."""


@dataclass(frozen=True, slots=True)
class Registration:
    """What :func:`register_city` did, by device id."""

    created: tuple[str, ...]
    updated: tuple[str, ...]
    unchanged: tuple[str, ...]
    left_unregistered: tuple[str, ...]

    @property
    def registered(self) -> tuple[str, ...]:
        """Every device the registry now describes as the simulator does."""
        return tuple(sorted((*self.created, *self.updated, *self.unchanged)))


def left_unregistered(devices: Sequence[Device], share: float, seed: int) -> frozenset[str]:
    """The ``share`` of the devices (rounded half up) that stay unregistered; the same for the same seed."""
    ids = sorted(d.device_id for d in devices)
    rng = random.Random(f"{seed}:unregistered")  # noqa: S311 - a simulation, not crypto
    return frozenset(rng.sample(ids, math.floor(share * len(ids) + 0.5)))


def device_metadata(device: Device, districts: Sequence[str], seed: int, interval_s: int) -> dict[str, Any]:
    """The registry entry of ``device`` as a PUT body (without ``registered_at``).

    The city model has no sites: each device gets one in its district, at a place drawn from the seed.
    ``interval_s`` is the simulator's tick, at which every device is due to report.
    """
    rng = random.Random(f"{seed}:site:{device.device_id}")  # noqa: S311 - a simulation, not crypto
    index = districts.index(device.district) if device.district in districts else 0
    angle = 2 * math.pi * index / max(len(districts), 1)
    lat = CITY_CENTRE[0] + _DISTRICT_RING_DEG * math.sin(angle) + rng.uniform(-1, 1) * _SITE_SPREAD_DEG
    # A degree of longitude is shorter than one of latitude away from the equator.
    east = _DISTRICT_RING_DEG * math.cos(angle) + rng.uniform(-1, 1) * _SITE_SPREAD_DEG
    lon = CITY_CENTRE[1] + east / math.cos(math.radians(CITY_CENTRE[0]))
    number = device.device_id.rsplit("-", 1)[-1]
    return {
        "domain": device.domain,
        "site": f"{device.district} {_SITE_KIND.get(device.domain, device.domain)} {number}",
        "district": device.district,
        "lat": round(lat, 6),
        "lon": round(lon, 6),
        "provenance": device.provenance.value,
        "status": DeviceStatus.ACTIVE.value,
        "expected_interval_s": interval_s,
    }


def put_body(
    wanted: dict[str, Any], since: datetime, existing: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The PUT that brings ``existing`` (the API's device, or None) to ``wanted``; None if it is already so.

    The registration time is the start of the simulated history, or an earlier one already recorded.
    """
    if existing is None:
        return {**wanted, "registered_at": since.isoformat()}
    registered = datetime.fromisoformat(existing["registered_at"])
    if registered <= since and all(existing.get(k) == v for k, v in wanted.items()):
        return None
    return {**wanted, "registered_at": min(registered, since).isoformat()}


async def register_city(sim: Simulation, *, retry_within_s: float = RETRY_WITHIN_S) -> Registration:
    """Register the city's devices, except those left unregistered on purpose, through the API."""
    settings = sim.settings
    url = settings.register_url
    if url is None:
        raise ConfigError("register_url is not set: there is no API to register the devices with")
    skip = left_unregistered(sim.devices, settings.unregistered_share, sim.seed)
    wanted = {
        d.device_id: device_metadata(d, settings.districts, sim.seed, settings.time_step_s)
        for d in sim.devices
        if d.device_id not in skip
    }
    since = from_us(sim.start_us)
    outcomes: dict[str, str] = {}
    httpx_log = logging.getLogger("httpx")
    if httpx_log.level == logging.NOTSET:
        # httpx logs every request at INFO: hundreds of lines that say less than our summary.
        httpx_log.setLevel(logging.WARNING)
    headers = {"Authorization": f"Bearer {await _api_key(settings)}"}
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=REQUEST_TIMEOUT_S, limits=limits
    ) as client:
        api = _Api(client, url, retry_within_s)

        async def one(device_id: str) -> None:
            outcomes[device_id] = await api.register(device_id, wanted[device_id], since)

        ids = sorted(wanted)
        if ids:
            # One alone first: it waits for an API that is still starting, and a bad key fails once.
            await one(ids[0])
            await _each(ids[1:], one, CONCURRENCY)
    kinds = {k: tuple(i for i in ids if outcomes[i] == k) for k in ("created", "updated", "unchanged")}
    done = Registration(kinds["created"], kinds["updated"], kinds["unchanged"], tuple(sorted(skip)))
    log.info(
        "registered %s devices at %s (%s new, %s updated, %s already up to date); %s left unregistered",
        len(done.registered),
        url,
        len(done.created),
        len(done.updated),
        len(done.unchanged),
        len(skip),
    )
    return done


async def _api_key(settings: SimulatorSettings) -> str:
    if settings.api_key is not None:
        return settings.api_key.get_secret_value().strip()
    path = settings.api_key_file
    if path is None:
        raise ConfigError(f"registering devices needs an API key; {_KEY_HINT}")
    try:
        key = (await asyncio.to_thread(path.read_text, encoding="utf-8")).strip()
    except OSError as exc:
        problem = f"cannot read the API key file {path} ({exc.strerror})"
        raise RegistrationError(f"{problem}; {_KEY_HINT}") from None
    if not key:
        raise RegistrationError(f"the API key file {path} is empty; {_KEY_HINT}")
    return key


async def _each(items: Iterable[str], work: Callable[[str], Awaitable[None]], concurrency: int) -> None:
    """``work`` on every item, ``concurrency`` at a time; the first failure stops the rest and is raised."""
    pending = iter(items)

    async def worker() -> None:
        for item in pending:
            await work(item)

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _Api:
    """The two device-registry calls, with retries while the API is unreachable or unavailable."""

    def __init__(self, client: httpx.AsyncClient, url: str, retry_within_s: float) -> None:
        self._client = client
        self._url = url
        self._retry_within_s = retry_within_s

    async def register(self, device_id: str, wanted: dict[str, Any], since: datetime) -> str:
        """Bring one device's entry to ``wanted``: ``created``, ``updated`` or ``unchanged``."""
        path = f"/v1/devices/{quote(device_id, safe='')}"
        found = await self.call("GET", path)
        existing = None if found.status_code == 404 else self.checked(found, device_id).json()
        body = put_body(wanted, since, existing)
        if body is None:
            return "unchanged"
        stored = self.checked(await self.call("PUT", path, body), device_id)
        return "created" if stored.status_code == 201 else "updated"

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_within_s
        delay = _FIRST_DELAY_S
        while True:
            try:
                response = await self._client.request(method, path, json=body)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code not in _RETRY_STATUS:
                    return response
                problem = f"HTTP {response.status_code}"
            if loop.time() + delay > deadline:
                raise ApiUnavailable(
                    f"the API at {self._url} did not answer {method} {path} within "
                    f"{self._retry_within_s:.0f}s ({problem}); start it (`cityingest api`) "
                    "or fix --register-url"
                )
            log.info("the API at %s is not ready (%s); retrying in %.1fs", self._url, problem, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY_S)

    def checked(self, response: httpx.Response, device_id: str) -> httpx.Response:
        """``response`` if it succeeded; otherwise the error that says what to fix."""
        status = response.status_code
        if response.is_success:
            return response
        detail = _detail(response)
        if status == 401:
            message = f"the API at {self._url} rejected the API key (401: {detail}); {_KEY_HINT}"
        elif status == 403:
            message = (
                f"the API key may not register devices (403: {detail}); it needs the scopes "
                f"devices:write and metrics:read: {_KEY_HINT}"
            )
        elif status == 422:
            message = (
                f"the API refused the metadata of device {device_id} (422: {detail}); check the "
                f"simulator's --districts against PUT /v1/devices in {self._url}/docs"
            )
        elif status == 404:
            message = f"{response.request.url} is not found (404): is {self._url} the API's base URL?"
        else:
            message = f"{response.request.method} {response.request.url} failed ({status}: {detail})"
        raise RegistrationError(message)


async def issue_credentials(
    settings: SimulatorSettings, device_ids: Sequence[str], *, retry_within_s: float = RETRY_WITHIN_S
) -> dict[str, str]:
    """Each device's MQTT password, issued (or rotated) through ``POST /v1/devices/{id}/credentials``."""
    url = settings.register_url
    if url is None:
        raise ConfigError("register_url is not set: there is no API to obtain credentials from")
    headers = {"Authorization": f"Bearer {await _api_key(settings)}"}
    passwords: dict[str, str] = {}
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=REQUEST_TIMEOUT_S, limits=limits
    ) as client:
        api = _Api(client, url, retry_within_s)

        async def one(device_id: str) -> None:
            path = f"/v1/devices/{quote(device_id, safe='')}/credentials"
            issued = api.checked(await api.call("POST", path), device_id).json()
            passwords[device_id] = str(issued["password"])

        await _each(sorted(device_ids), one, CONCURRENCY)
    log.info("obtained MQTT credentials for %s devices from %s", len(passwords), url)
    return passwords


def _detail(response: httpx.Response) -> str:
    """The problem's ``detail`` (RFC 9457), else the start of the body."""
    try:
        doc = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(doc, dict) and isinstance(doc.get("detail"), str):
        return str(doc["detail"])
    return response.text[:200]
