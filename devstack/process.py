"""Child processes that never outlive us, and small helpers for ports and readiness."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import pwd
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from core.errors import CityIngestError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class ServiceError(CityIngestError):
    """A local service could not be installed, started or stopped."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    # The kernel sends SIGTERM to the child when our process dies, even by SIGKILL: no orphans.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="ascii").split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now, chosen below the kernel's ephemeral range.

    A port from the ephemeral range (what binding port 0 gives) may become the local port of any
    outgoing connection on the machine before our server binds it, and its TIME_WAIT then blocks the
    server for a minute; ports below the range are only ever taken by servers that ask for them.
    """
    low, _ = _ephemeral_range()
    if low > 20_000:
        for _ in range(100):
            port = secrets.randbelow(low - 20_000) + 20_000
            if port_is_free(port, host):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` now.

    Checked the way servers bind (PostgreSQL, Mosquitto and uvicorn all set ``SO_REUSEADDR``): the
    TIME_WAIT sockets a server leaves behind for a minute after it stops do not make its port busy,
    a socket that listens there does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def wait_for_port(host: str, port: int, timeout: float, alive: Callable[[], bool]) -> None:
    """Block until something accepts TCP connections on ``host:port``; fail if ``alive`` turns false."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise ServiceError(f"process died before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ServiceError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


def service_user(name: str) -> str | None:
    """The unprivileged account to run a service as when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise ServiceError(
            f"running as root needs the system user {name!r} to run the service; "
            "install the Debian package that creates it (see `make setup`)"
        ) from None
    return name


def drop_privileges(user: str | None) -> dict[str, Any]:
    """``subprocess`` arguments that run a child as ``user`` with only that user's own group."""
    if user is None:
        return {}
    # Keeping root's group would let the group bits of root-owned parents deny access.
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


def chown_tree(path: Path, user: str | None) -> None:
    """Give ``path`` (recursively) to ``user`` when we run as root; make its parents traversable."""
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o001)


class ChildProcess:
    """A subprocess started in its own process group and killed if we die."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.user = user
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        """Start the process, appending its output to ``log_path``."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait_stopped()
        log.debug("starting %s: %s", self.name, " ".join(self.argv))
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            process_group=0,
            **drop_privileges(self.user),
            preexec_fn=_die_with_parent,  # only prctl(): safe between fork and exec
        )

    @property
    def pid(self) -> int | None:
        """The process id, once started."""
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        """Whether the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        """The exit status once it has exited."""
        return None if self.proc is None else self.proc.poll()

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the process (not its group) if it runs."""
        if self.alive() and self.proc is not None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Ask the process to stop with ``sig``; SIGKILL its group after ``timeout``. Idempotent."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", self.name, timeout)
                self.kill()
        return self.wait_stopped()

    def kill(self) -> None:
        """SIGKILL the process and its whole group, now."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def kill_leftovers(self) -> None:
        """SIGKILL what is left of the process group of a leader that died (PostgreSQL's backends)."""
        if self.proc is not None and self.proc.poll() is not None:
            # The group id stays reserved while a member lives, so it cannot name someone else's group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def wait_stopped(self) -> int | None:
        """Reap the process and close its log."""
        code = None if self.proc is None else self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def rss_mb(self) -> float:
        """Resident memory of the process in MiB (0 when it does not run)."""
        if self.proc is None or not self.alive():
            return 0.0
        try:
            with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def start_listening(
        self, host: str, port: int, timeout: float, ready: Callable[[], None] | None = None
    ) -> None:
        """Start the process and wait until it listens on ``host:port`` (and ``ready`` passes, when given);
        on failure kill it and say why."""
        self.start()
        try:
            wait_for_port(host, port, timeout, self.alive)
            if ready is not None:
                ready()
        except ServiceError as exc:
            self.kill()
            self.wait_stopped()
            raise ServiceError(f"{self.name} did not start: {exc}\n{self.tail()}") from None

    def tail(self, lines: int = 30) -> str:
        """The last lines of the process's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 within a second (a health check of one of our own processes)."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own loopback URL
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


async def wait_healthy(proc: ChildProcess, url: str, within_s: float) -> None:
    """Wait until ``proc`` answers 200 at ``url``; ServiceError (with its log's tail) if it exits first
    or takes longer than ``within_s``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise ServiceError(f"{proc.name} exited during start-up:\n{proc.tail()}")
        if await asyncio.to_thread(http_ok, url):
            return
        await asyncio.sleep(0.2)
    raise ServiceError(f"{proc.name} did not become healthy within {within_s:.0f}s:\n{proc.tail()}")


class ServiceProcess:
    """What the dev stack's supervision needs of a service running one :class:`ChildProcess` in ``_proc``."""

    _proc: ChildProcess | None

    def exit_code(self) -> int | None:
        """The exit status if the process ended without stop() (a crash); None while it runs."""
        return self._proc.returncode() if self._proc is not None else None

    def reset(self) -> None:
        """Reap a dead process (and what is left of its process group) before a restart."""
        if self._proc is not None and not self._proc.alive():
            self._proc.kill_leftovers()
            self._proc.wait_stopped()
            self._proc = None
