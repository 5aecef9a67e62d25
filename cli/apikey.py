"""``cityingest apikey create --name N --scope S...``: print a new API key once; only its hash is stored."""

from __future__ import annotations

import argparse
from typing import Any

from cli.flags import add_settings_flags, settings_from_args
from core.settings import DatabaseSettings

SCOPES = ("metrics:read", "statistics:read", "devices:write", "ops:read")


def add_parser(sub: Any) -> None:
    """Register ``apikey create`` under the top-level subparsers."""
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


async def create_key(args: argparse.Namespace) -> None:
    """Create the key described by ``args`` and print it."""
    from api.keys import create_api_key  # keeps the API out of other commands

    settings = settings_from_args(DatabaseSettings, args)
    key = await create_api_key(settings.database_url, args.name, sorted(set(args.scopes)))
    print(key)
