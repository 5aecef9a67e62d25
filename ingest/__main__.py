"""``python -m ingest``: run one bridge from ``CITYINGEST_*`` settings until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from ingest import serve
from ingest.settings import BridgeSettings


async def _main() -> None:
    settings = BridgeSettings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    main = asyncio.ensure_future(serve(settings))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await main


if __name__ == "__main__":
    asyncio.run(_main())
