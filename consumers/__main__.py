"""``python -m consumers``: run one consumer from ``CITYINGEST_*`` variables until SIGINT/SIGTERM."""

from __future__ import annotations

import signal
import sys
from typing import NoReturn


def _exit_now(_signum: int, _frame: object) -> NoReturn:
    # A stop request before the consumer runs: nothing to clean up yet.
    sys.exit(0)


def main() -> None:
    """Run one consumer until interrupted; a clean stop exits with status 0."""
    signal.signal(signal.SIGTERM, _exit_now)
    # Imported after the handler is set: importing takes a moment, and a SIGTERM then must not kill us.
    import asyncio
    import contextlib
    import logging

    from consumers.consumer import serve
    from consumers.settings import ConsumerSettings

    settings = ConsumerSettings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def run() -> None:
        task = asyncio.create_task(serve(settings))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
