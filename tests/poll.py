"""One way to wait in a test: poll a condition against a monotonic deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(probe: Callable[[], T | None], what: str, timeout: float = 30.0,
               interval: float = 0.2, last: Callable[[], object] | None = None) -> T:
    """Call ``probe`` until it returns something truthy, and return that.

    Fails after ``timeout`` seconds with "<what>: still not so after N s", followed by
    what ``last()`` says then (the latest state seen: it turns a timeout into a
    diagnosis). Never a fixed sleep: Slurm and the orchestrator take the time they take.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() >= deadline:
            seen = f"; last seen: {last()!r}" if last is not None else ""
            raise AssertionError(f"{what}: still not so after {timeout:g} s{seen}")
        time.sleep(interval)
