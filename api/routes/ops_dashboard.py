"""``/ops``: the operators' dashboard, one page served with its script and style from this package.

Nothing is loaded from elsewhere (city networks and this project's machines are often offline), so
the Content-Security-Policy allows this origin only, no inline code, and no framing. The page itself
needs no key; the figures it polls (``/v1/ops/overview``) need ``ops:read``.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Final

from fastapi import APIRouter
from fastapi.responses import Response

from api.problems import Problem

router = APIRouter(tags=["ops"])

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Small files that change with the release: revalidate rather than run a stale script.
    "Cache-Control": "no-cache",
}
_ASSETS: Final = {
    "ops.js": "text/javascript; charset=utf-8",
    "ops.css": "text/css; charset=utf-8",
}


@functools.cache
def _read(name: str) -> bytes:
    return (resources.files("api") / "dashboard" / name).read_bytes()


@router.get(
    "/ops",
    response_class=Response,
    responses={200: {"content": {"text/html": {}}, "description": "The dashboard page."}},
)
async def dashboard() -> Response:
    """The operators' dashboard: lag, throughput, dead letters, unregistered devices and health,
    refreshing by itself. It asks once for a key with the `ops:read` scope."""
    return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=_HEADERS)


@router.get("/ops/assets/{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    """The dashboard's script and style sheet."""
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise Problem(404, "Not found", f"the dashboard has no asset {name!r}")
    return Response(_read(name), media_type=media_type, headers=_HEADERS)
