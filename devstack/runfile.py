"""The running dev stack's address book: ``<state_dir>/dev-stack.json``, written while it runs.

Other ``cityingest`` commands started from the same directory (``apikey``, ``migrate``) read it to find
the dev stack's database without being told, since its port is not PostgreSQL's default.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Final

RUN_FILE: Final = "dev-stack.json"


def write_run_file(state_dir: Path, endpoints: dict[str, str]) -> Path:
    """Record this process as the running dev stack of ``state_dir`` with its ``endpoints``."""
    path = state_dir / RUN_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), **endpoints}, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def remove_run_file(state_dir: Path) -> None:
    """Forget the run file, if it is ours."""
    path = state_dir / RUN_FILE
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
            path.unlink()


def running_endpoint(state_dir: Path, name: str) -> str | None:
    """Endpoint ``name`` of the dev stack running from ``state_dir``; None when none runs there."""
    try:
        doc = json.loads((state_dir / RUN_FILE).read_text(encoding="utf-8"))
        pid = int(doc["pid"])
        value = doc.get(name)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(value, str) or not _alive(pid):
        return None
    return value


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
