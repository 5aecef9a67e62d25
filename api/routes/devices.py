"""``/v1/devices``: the device registry (list, one, register or update) and latest values."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field, model_validator

from api import queries
from api.auth import Principal, Scope, require
from api.broker_accounts import follow_device
from api.deps import CursorsDep, PoolDep, SettingsDep, utc
from api.pagination import Cursor, Limit, Page
from api.problems import Problem
from core.types import MAX_DEVICE_ID_LENGTH, DeviceStatus, Provenance

router = APIRouter(prefix="/v1/devices", tags=["devices"])

DeviceId = Annotated[str, Path(min_length=1, max_length=MAX_DEVICE_ID_LENGTH, pattern=r"^[^\x00]+$")]
Reader = Annotated[Principal, Depends(require(Scope.METRICS_READ))]
Writer = Annotated[Principal, Depends(require(Scope.DEVICES_WRITE))]
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$"


class Device(BaseModel):
    """A device as the registry holds it; first/last seen are maintained by the consumer."""

    device_id: str
    domain: str
    site: str | None
    district: str | None
    lat: float | None
    lon: float | None
    provenance: Provenance
    status: DeviceStatus
    expected_interval_s: int | None = Field(description="How often the device should report, seconds.")
    registered_at: datetime
    updated_at: datetime
    first_seen: datetime | None
    last_seen: datetime | None
    last_reading_at: datetime | None


class DeviceIn(BaseModel):
    """Metadata to register a device with (or replace on an existing one)."""

    domain: str = Field(pattern=_NAME, description="Domain, e.g. water, power, building, environment.")
    site: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[^\x00]+$")
    district: str | None = Field(None, pattern=_NAME, description="District, the REF_AREA of statistics.")
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    provenance: Provenance = Provenance.UNKNOWN
    status: DeviceStatus = DeviceStatus.ACTIVE
    expected_interval_s: int | None = Field(None, gt=0, le=31_622_400)
    registered_at: datetime | None = Field(
        None, description="Since when the device is expected to report (default: kept, or now if new)."
    )

    @model_validator(mode="after")
    def _both_coordinates(self) -> DeviceIn:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("give both lat and lon, or neither")
        return self


class LatestValue(BaseModel):
    """The newest reading of one metric."""

    metric: str
    time: datetime
    value: float


class Latest(BaseModel):
    """Newest reading per metric of a device."""

    device_id: str
    metrics: list[LatestValue]


def _device(row: Any) -> Device:
    return Device.model_validate(dict(row.items()))


@router.get("")
async def list_devices(
    pool: PoolDep,
    cursors: CursorsDep,
    _: Reader,
    domain: Annotated[str | None, Query(max_length=100)] = None,
    district: Annotated[str | None, Query(max_length=100)] = None,
    provenance: Provenance | None = None,
    status: DeviceStatus | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[Device]:
    """Devices, by id, filtered by domain, district, provenance and status."""
    after = str(cursors.decode("devices", cursor, 1)[0]) if cursor else None
    rows = await queries.list_devices(pool, [district, domain, provenance], status, after, limit + 1)
    return cursors.page_of([_device(r) for r in rows], limit, "devices", lambda d: [d.device_id])


async def _existing(pool: PoolDep, device_id: str) -> Any:
    row = await queries.get_device(pool, device_id)
    if row is None:
        raise Problem(
            404,
            "Unknown device",
            f"no device {device_id!r}; list devices with GET /v1/devices or register it with PUT",
        )
    return row


@router.get("/{device_id}")
async def get_device(pool: PoolDep, _: Reader, device_id: DeviceId) -> Device:
    """One device."""
    return _device(await _existing(pool, device_id))


@router.put("/{device_id}", responses={201: {"model": Device, "description": "Registered"}})
async def put_device(
    request: Request,
    pool: PoolDep,
    settings: SettingsDep,
    _: Writer,
    device_id: DeviceId,
    body: DeviceIn,
    response: Response,
) -> Device:
    """Register a device, or replace the metadata of a known one (the consumer's columns stay).

    The domain must be one devices may publish under (`CITYINGEST_DOMAINS`), else 422. A status other
    than `active` revokes the device's MQTT credentials; a new domain moves its MQTT topic (the broker
    follows within seconds).
    """
    if body.domain not in settings.domains:
        # The bridge dead-letters every reading under another domain (unknown_domain): such a device
        # could never report, so registering it would only make it count as silent.
        raise Problem(
            422,
            "Unknown domain",
            f"no device can publish under domain {body.domain!r}; use one of: {', '.join(settings.domains)}",
            parameter="domain",
        )
    registered = utc(body.registered_at, "registered_at") if body.registered_at else None
    values = [
        body.domain,
        body.site,
        body.district,
        body.lat,
        body.lon,
        body.provenance.value,
        body.status.value,
        body.expected_interval_s,
        registered,
    ]
    row = await queries.upsert_device(pool, device_id, values)
    await follow_device(request.app.state.accounts, pool, device_id)
    response.status_code = 201 if row["created"] else 200
    return _device({k: v for k, v in row.items() if k != "created"})


@router.get("/{device_id}/latest")
async def latest(pool: PoolDep, _: Reader, device_id: DeviceId) -> Latest:
    """The newest reading time and value of each metric the device reported."""
    await _existing(pool, device_id)
    rows = await queries.latest(pool, device_id)
    return Latest(
        device_id=device_id,
        metrics=[LatestValue(metric=r["metric"], time=r["last_ts"], value=r["last_value"]) for r in rows],
    )
