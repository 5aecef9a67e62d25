"""``cityingest apikey create|list|revoke``: manage the REST API's keys; only a key's hash is stored.

Without ``--database-url`` (or ``CITYINGEST_DATABASE_URL``) the commands use the database of the dev
stack running from this directory (``cityingest dev``), if one runs, and say so on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from cli.flags import add_settings_flags, settings_from_args
from core.errors import ConfigError
from core.settings import DatabaseSettings
from devstack.runfile import running_endpoint

SCOPES = ("metrics:read", "statistics:read", "statistics:publish", "devices:write", "ops:read")


def add_parser(sub: Any) -> None:
    """Register ``apikey create|list|revoke`` under the top-level subparsers."""
    apikey = sub.add_parser("apikey", help="manage API keys", description="Manage API keys.")
    actions = apikey.add_subparsers(dest="apikey_action", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        help="create a key and print it once (only its hash is stored)",
        description="Create an API key with the given scopes and print it once; only its hash is stored.",
    )
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument(
        "--scope",
        dest="scopes",
        action="extend",
        nargs="+",
        required=True,
        choices=SCOPES,
        help="one or more scopes: " + ", ".join(SCOPES),
    )
    add_settings_flags(create, DatabaseSettings)
    create.set_defaults(apikey_handler=create_key)

    listing = actions.add_parser(
        "list",
        help="list the keys (ids, names, scopes, use; never the secrets)",
        description="List every API key: id, name, scopes, when it was created and last used, and "
        "whether it is revoked. Secrets are never stored, so they cannot be listed.",
    )
    add_settings_flags(listing, DatabaseSettings)
    listing.set_defaults(apikey_handler=list_keys)

    revoke = actions.add_parser(
        "revoke",
        help="revoke a key at once (by its id or the whole key)",
        description="Revoke an API key; requests with it are refused (401) from now on.",
    )
    revoke.add_argument(
        "key", metavar="KEY_ID", help="the key's id (as `apikey list` shows) or the whole key"
    )
    add_settings_flags(revoke, DatabaseSettings)
    revoke.set_defaults(apikey_handler=revoke_key)


def database_url(args: argparse.Namespace) -> str:
    """The database to use: flag or variable, else the dev stack running from this directory."""
    settings = settings_from_args(DatabaseSettings, args)
    if "database_url" in settings.model_fields_set:
        return settings.database_url
    state_dir = Path(os.environ.get("CITYINGEST_STATE_DIR", ".cityingest"))
    dev = running_endpoint(state_dir, "database")
    if dev is not None:
        print(f"cityingest apikey: using the dev stack's database {dev}", file=sys.stderr)
        return dev
    return settings.database_url


async def create_key(args: argparse.Namespace) -> None:
    """Create the key described by ``args`` and print it."""
    from api.keys import create_api_key  # keeps the API out of other commands

    try:
        key = await create_api_key(database_url(args), args.name, sorted(set(args.scopes)))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    print(key)


async def list_keys(args: argparse.Namespace) -> None:
    """Print one line per key, newest first."""
    from api.keys import list_api_keys

    keys = await list_api_keys(database_url(args))
    if not keys:
        print("no API keys")
        return
    print(f"{'KEY_ID':<24} {'STATUS':<8} {'CREATED':<20} {'LAST_USED':<20} {'SCOPES':<40} NAME")
    for k in keys:
        used = k.last_used_at.strftime("%Y-%m-%dT%H:%M:%SZ") if k.last_used_at else "never"
        status = "revoked" if k.revoked_at else "active"
        created = k.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"{k.key_id:<24} {status:<8} {created:<20} {used:<20} {','.join(k.scopes):<40} {k.name}")


async def revoke_key(args: argparse.Namespace) -> None:
    """Revoke the key named by ``args.key``; an unknown or already revoked key is an error."""
    from api.auth import parse_key
    from api.keys import revoke_api_key

    parsed = parse_key(args.key)
    key_id = parsed[0] if parsed is not None else args.key
    if not await revoke_api_key(database_url(args), key_id):
        raise ConfigError(f"no active API key with id {key_id!r} (see `cityingest apikey list`)")
    print(f"revoked {key_id}")
