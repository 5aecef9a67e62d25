"""OpenAPI links between the operations: how a client walks the API, and what stateful tests follow.

Each list links to its own next page (``cursor`` from ``next_cursor``, the required parameters from the
request), and a registered or listed device links to its own endpoints and its series. The links are
added to the generated document, by operation id, so they follow the routes as they change.
"""

from __future__ import annotations

from typing import Any, Final

LISTS: Final = ("/v1/devices", "/v1/series", "/v1/aggregates", "/v1/statistics/monthly", "/v1/coverage")
_DEVICE_TARGETS: Final = (
    ("Device", "/v1/devices/{device_id}", "device_id"),
    ("LatestOfDevice", "/v1/devices/{device_id}/latest", "device_id"),
    ("SeriesOfDevice", "/v1/series", "device_id"),
)


def _link(operation: dict[str, Any], parameters: dict[str, str], description: str) -> dict[str, Any]:
    return {"operationId": operation["operationId"], "parameters": parameters, "description": description}


def add_links(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (an OpenAPI document of this API) with its links added in place."""
    paths: dict[str, Any] = schema.get("paths", {})
    for path in LISTS:
        operation = paths.get(path, {}).get("get")
        if operation is None:
            continue
        carried = {
            p["name"]: f"$request.query.{p['name']}"
            for p in operation.get("parameters", [])
            if p.get("in") == "query" and p.get("required")
        }
        link = _link(
            operation,
            {**carried, "cursor": "$response.body#/next_cursor"},
            "The next page: pass `next_cursor` unchanged as `cursor`.",
        )
        operation["responses"]["200"].setdefault("links", {})["NextPage"] = link
    sources = [
        (paths.get("/v1/devices/{device_id}", {}).get("put"), ("200", "201"), "$response.body#/device_id"),
        (paths.get("/v1/devices", {}).get("get"), ("200",), "$response.body#/items/0/device_id"),
    ]
    for source, statuses, device in sources:
        if source is None:
            continue
        for status in statuses:
            links = source["responses"].get(status, {}).setdefault("links", {})
            for name, path, parameter in _DEVICE_TARGETS:
                target = paths.get(path, {}).get("get")
                if target is not None:
                    links[name] = _link(target, {parameter: device}, f"`GET {path}` of this device.")
    return schema
