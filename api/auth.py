"""API keys: ``cik_<key_id>_<secret>`` sent as ``Authorization: Bearer <key>``, checked per scope.

The store keeps the key id, name, scopes and the SHA-256 of the secret (never the secret). The secret
is 256 random bits, so a fast hash is safe: there is nothing to guess. Missing or unknown key: 401;
a valid key without the route's scope: 403.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from fastapi import Request, Security
from fastapi.dependencies.models import Dependant
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api import key_queries
from api.problems import Problem

KEY_PREFIX: Final = "cik"
_KEY = re.compile(r"^cik_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


class Scope(enum.StrEnum):
    """What a key may do."""

    METRICS_READ = "metrics:read"
    """devices, series, aggregates"""
    STATISTICS_READ = "statistics:read"
    """monthly statistics, coverage, releases and revisions"""
    STATISTICS_PUBLISH = "statistics:publish"
    """publish statistics releases"""
    DEVICES_WRITE = "devices:write"
    """register and update devices"""
    OPS_READ = "ops:read"
    """consumer lag, Prometheus metrics"""


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly generated key: the plaintext (shown once) and what the store keeps."""

    key_id: str
    plaintext: str
    secret_sha256: bytes


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller behind a verified key."""

    key_id: str
    name: str
    scopes: frozenset[str]


def new_key() -> NewKey:
    """Generate a key id and a 256-bit secret."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return NewKey(key_id, f"{KEY_PREFIX}_{key_id}_{secret}", hash_secret(secret))


def hash_secret(secret: str) -> bytes:
    """SHA-256 of a key's secret part."""
    return hashlib.sha256(secret.encode("ascii")).digest()


def parse_key(key: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else None."""
    match = _KEY.match(key)
    return (match.group(1), match.group(2)) if match else None


def check_scopes(scopes: list[str]) -> list[str]:
    """The scopes, sorted and deduplicated; ValueError on an unknown one."""
    known = {s.value for s in Scope}
    unknown = sorted(set(scopes) - known)
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if not scopes:
        raise ValueError("a key needs at least one scope")
    return sorted(set(scopes))


SCHEME: Final = "apiKey"
"""Name of the security scheme in the OpenAPI document; each operation lists the scope it needs."""
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name=SCHEME,
    description="An API key: `Authorization: Bearer cik_...`. Each operation's security requirement "
    "names the scope the key needs (`cityingest apikey create --scope <scope>`).",
)
_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="cityingest"'}
_REQUIRED: dict[Callable[..., Any], Scope] = {}


def _unauthorized(detail: str) -> Problem:
    return Problem(401, "Unauthorized", detail, headers=_CHALLENGE)


def bearer_credentials(authorization: str | None) -> HTTPAuthorizationCredentials | None:
    """The bearer credentials of an ``Authorization`` header, as the routes' dependency reads them."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return HTTPAuthorizationCredentials(scheme=scheme, credentials=token.strip())


async def _principal(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    if credentials is None:
        raise _unauthorized(
            "send an API key as `Authorization: Bearer <key>`; create one with `cityingest apikey create`"
        )
    parsed = parse_key(credentials.credentials)
    if parsed is None:
        raise _unauthorized("the API key is malformed: keys look like cik_<16 hex>_<43 characters>")
    key_id, secret = parsed
    digest = hash_secret(secret)
    row = await key_queries.api_key(request.app.state.pool, key_id, digest)
    if row is None or row.revoked or not hmac.compare_digest(row.secret_sha256, digest):
        raise _unauthorized(
            "the API key is unknown or revoked; create a new one with `cityingest apikey create`"
        )
    return Principal(key_id, row.name, frozenset(row.scopes))


async def authorize(
    request: Request, credentials: HTTPAuthorizationCredentials | None, scope: Scope
) -> Principal:
    """The caller behind ``credentials`` if its key has ``scope``: else a 401 or 403 problem."""
    known: Principal | None = getattr(request.state, "principal", None)
    # The body guard (api.guard) may have checked the key already, before reading the body.
    principal = known if known is not None else await _principal(request, credentials)
    request.state.principal = principal
    if scope.value not in principal.scopes:
        raise Problem(
            403,
            "Forbidden",
            f"the key {principal.key_id!r} lacks the scope {scope.value!r} this endpoint needs; "
            f"create a key with `cityingest apikey create --scope {scope.value}`",
        )
    return principal


def require(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits callers whose key has ``scope``; the OpenAPI lists ``scope`` from it."""

    # A default, not an Annotated annotation: annotations are strings here, and `scope` is a local.
    async def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(_bearer, scopes=[scope.value]),  # noqa: B008
    ) -> Principal:
        return await authorize(request, credentials, scope)

    _REQUIRED[dependency] = scope
    return dependency


def require_unless(
    scope: Scope, public: Callable[[Request], bool]
) -> Callable[..., Awaitable[Principal | None]]:
    """Like :func:`require`, but admits anyone (None) while ``public(request)`` holds (SDMX public mode)."""

    async def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(_bearer, scopes=[scope.value]),  # noqa: B008
    ) -> Principal | None:
        if public(request):
            return None
        return await authorize(request, credentials, scope)

    # Not in _REQUIRED: the body guard must not demand a key that public mode waives.
    return dependency


def required_scope(dependant: Dependant) -> Scope | None:
    """The scope a route's dependencies demand through :func:`require`, or None for an open route."""
    pending = [dependant]
    while pending:
        current = pending.pop()
        if current.call is not None and current.call in _REQUIRED:
            return _REQUIRED[current.call]
        pending.extend(current.dependencies)
    return None
