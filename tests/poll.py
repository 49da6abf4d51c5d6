"""One way to wait in a test: poll a condition against a monotonic deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(probe: Callable[[], T | None], timeout: float = 30.0,
         interval: float = 0.2) -> T | None:
    """Call ``probe`` until it returns something truthy, and return that; None after
    ``timeout`` seconds.

    For the few waits whose timeout is an outcome, not a failure (clean-up that
    escalates, "still not logged" as the expected answer); any other wait is
    ``poll_until``. The probe may raise to stop the wait at once (a process died).
    """
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def poll_until(probe: Callable[[], T | None], what: str, timeout: float = 30.0,
               interval: float = 0.2, last: Callable[[], object] | None = None) -> T:
    """Call ``probe`` until it returns something truthy, and return that.

    Fails after ``timeout`` seconds with "<what>: still not so after N s", followed by
    what ``last()`` says then (the latest state seen: it turns a timeout into a
    diagnosis; a string is shown as is, so a server log stays readable). Never a fixed
    sleep: Slurm and the orchestrator take the time they take.
    """
    found = poll(probe, timeout, interval)
    if found:
        return found
    seen = ""
    if last is not None:
        state = last()
        seen = f"; last seen: {state if isinstance(state, str) else repr(state)}"
    raise AssertionError(f"{what}: still not so after {timeout:g} s{seen}")
