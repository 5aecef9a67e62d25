"""Restarting what the dev stack started: restart delays with backoff, and a watch over each service.

A process that keeps crashing is restarted ever more slowly (1, 2, 5, 10 s); one that ran healthy for
a while before it died starts over at the shortest delay, as if it had never failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from core.runtime import Backoff
from devstack.process import ServiceError

log = logging.getLogger(__name__)

RESTART_DELAY_S: Final = (1.0, 10.0)
"""The first and the longest delay before restarting a process that died (doubling in between)."""
HEALTHY_AFTER_S: Final = 60.0
"""A process that ran this long before it died is restarted after the first, shortest delay again."""


def restart_backoff() -> Backoff:
    """The restart delays of every process the dev stack supervises."""
    first, longest = RESTART_DELAY_S
    return Backoff(first, longest, healthy_after_s=HEALTHY_AFTER_S)


class Service(Protocol):
    """What the stack runs itself: PostgreSQL, Mosquitto, Tansu."""

    def start(self, timeout: float = ...) -> None:
        """Start the process; return once it serves (blocking)."""

    def exit_code(self) -> int | None:
        """The exit status if the process ended without being stopped; None while it runs."""

    def reset(self) -> None:
        """Reap the dead process and anything of its process group still left, before a start."""


Hook = Callable[[], Awaitable[None]]


class ServiceWatch:
    """Restarts one service whenever its process dies, with backoff, until the stack stops."""

    def __init__(
        self,
        name: str,
        service: Service,
        *,
        before_restart: Hook | None = None,
        after_restart: Hook | None = None,
        consequence: str = "",
    ) -> None:
        self.name = name
        self.service = service
        self.before_restart = before_restart
        self.after_restart = after_restart
        self.consequence = consequence
        """What its death means for data, said in the log each time it dies."""
        self.backoff = restart_backoff()
        self.restarts = 0
        self._restart_at: float | None = None
        self._after_pending = False

    async def check(self) -> None:
        """Notice a death and restart the service once its delay has passed (call it periodically)."""
        now = time.monotonic()
        if self._after_pending:
            await self._run_after_hook()
            return
        if self._restart_at is None:
            code = self.service.exit_code()
            if code is None:
                return
            delay = self.backoff.delay()
            self._restart_at = now + delay
            log.error(
                "%s died (exit status %s)%s; restarting it in %.0fs",
                self.name,
                code,
                f": {self.consequence}" if self.consequence else "",
                delay,
            )
            return
        if now < self._restart_at:
            return
        await self._restart()

    async def _restart(self) -> None:
        if self.before_restart is not None:
            await self.before_restart()
        await asyncio.to_thread(self.service.reset)
        try:
            await asyncio.to_thread(self.service.start)
        except ServiceError as exc:
            # start() reaped the failed attempt: the next check sees a death and backs off further.
            log.error("%s did not restart: %s", self.name, exc)  # noqa: TRY400 - its log tail says why
            self.backoff.started()
            self._restart_at = time.monotonic() + self.backoff.delay()
            return
        self.restarts += 1
        self.backoff.started()
        self._restart_at = None
        log.warning("%s restarted (restart %d)", self.name, self.restarts)
        self._after_pending = self.after_restart is not None
        await self._run_after_hook()

    async def _run_after_hook(self) -> None:
        if self.after_restart is None:
            return
        try:
            await self.after_restart()
        except ServiceError as exc:
            # Retried on the next check: what follows a restart (topics, offsets) must not be skipped.
            log.error("after restarting %s: %s; trying again", self.name, exc)  # noqa: TRY400 - expected
            return
        self._after_pending = False
