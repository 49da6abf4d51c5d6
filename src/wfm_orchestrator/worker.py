"""A background loop: ``step()`` every interval, or at once when woken.

The Slurm job follower runs one (all Slurm I/O of services and steps happens
on it, so a slow or absent slurmrestd never blocks a request thread), and the
service manager's housekeeping another.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, name: str, step: Callable[[], object], interval: float,
                 stop_timeout: float):
        self.name = name
        self._step = step
        self._interval = interval
        self._stop_timeout = stop_timeout
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """Run the next step now rather than at the end of the interval."""
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self._stop_timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:  # noqa: BLE001 - the loop must survive anything and say so
                log.exception("%s: one cycle failed; retrying", self.name)
            self._wake.wait(self._interval)
            self._wake.clear()
