"""The lifecycle of a long-running component (bridge, consumer), checked at the top of its public methods."""

from __future__ import annotations

import enum


class State(enum.Enum):
    """new -> starting -> running -> stopping -> stopped; failed from starting or running (restart me)."""

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class StateError(RuntimeError):
    """A method was called in a state that does not allow it (a second start(), wait() before start())."""


def check_state(component: str, state: State, *allowed: State) -> None:
    """Raise :class:`StateError` unless ``state`` is one of ``allowed``."""
    if state not in allowed:
        raise StateError(f"the {component} is {state.value}")
