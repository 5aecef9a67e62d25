"""Secrets the dev stack generates once and keeps in its state directory (readable by us only)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def state_secret(path: Path) -> str:
    """The secret stored at ``path``; a new random one (256 bits, hex) written there first if none is."""
    if path.exists():
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    # Created with mode 0600 from the start: never readable by others, not even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(value + "\n")
    return value
