"""``cityingest <command>``: dev, bridge, consume, api, migrate, simulate, apikey.

Each command reads its settings from ``CITYINGEST_*`` variables and from flags (flags win), runs
until it is done or receives SIGINT/SIGTERM, and then shuts down cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic_settings import BaseSettings

from cli import apikey
from cli.flags import add_settings_flags, settings_from_args
from core.errors import CityIngestError
from core.runtime import run_until_signalled

log = logging.getLogger("cityingest")


@dataclass(frozen=True)
class Command:
    """A subcommand: its settings model and the coroutine function that runs it."""

    name: str
    help: str
    settings: str
    """``module:Class`` of the settings model."""
    run: str
    """``module:function`` taking the settings and returning a coroutine."""


COMMANDS: tuple[Command, ...] = (
    Command(
        "dev",
        "run the whole embedded stack: PostgreSQL+TimescaleDB, Mosquitto, Tansu, bridge, consumer, API "
        "and a device simulator",
        "devstack.settings:DevSettings",
        "devstack.stack:serve",
    ),
    Command(
        "bridge",
        "forward validated MQTT readings to Kafka, dead-lettering bad payloads",
        "ingest.settings:BridgeSettings",
        "ingest.bridge:serve",
    ),
    Command(
        "consume",
        "apply readings from Kafka to the TimescaleDB store, exactly once",
        "consumers.settings:ConsumerSettings",
        "consumers.consumer:serve",
    ),
    Command("api", "serve the REST API", "api.settings:ApiSettings", "api.app:serve"),
    Command(
        "migrate",
        "apply the database migrations (forward-only, idempotent)",
        "core.settings:DatabaseSettings",
        "cli.main:migrate",
    ),
    Command(
        "simulate",
        "publish a simulated city's devices over MQTT",
        "simulator.settings:SimulatorSettings",
        "simulator.publisher:serve",
    ),
)


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


async def migrate(settings: Any) -> None:
    """Apply pending migrations to ``settings.database_url`` and say which."""
    from migrations import apply_migrations

    applied = await apply_migrations(settings.database_url)
    print("applied: " + ", ".join(applied) if applied else "the database is up to date")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="cityingest",
        description="Streaming ingestion of smart-city sensor data: MQTT -> Kafka -> TimescaleDB -> API.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        add_settings_flags(p, _load(command.settings))
        p.set_defaults(command_spec=command)
    apikey.add_parser(sub)
    return parser


def _configure_logging(settings: BaseSettings) -> None:
    level = str(getattr(settings, "log_level", "INFO")).upper()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _stop_while_starting(_signum: int, _frame: object) -> None:
    # SIGTERM before the service's own handlers are installed (imports take a moment): nothing runs yet,
    # so stopping now is a clean stop.
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cityingest`` command; returns the exit status."""
    signal.signal(signal.SIGTERM, _stop_while_starting)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "apikey":
        logging.basicConfig(level="WARNING", stream=sys.stderr)
        try:
            asyncio.run(args.apikey_handler(args))
        except CityIngestError as exc:
            print(f"cityingest apikey: {exc}", file=sys.stderr)
            return 1
        return 0
    command: Command = args.command_spec
    try:
        settings = settings_from_args(_load(command.settings), args)
        _configure_logging(settings)
        run: Callable[[Any], Coroutine[Any, Any, None]] = _load(command.run)
        asyncio.run(run_until_signalled(run(settings)))
    except CityIngestError as exc:
        print(f"cityingest {command.name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
