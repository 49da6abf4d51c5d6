"""When Python's cyclic garbage collector does its full collections.

A full collection visits every object the process holds, and the
orchestrator holds one record per reservation: with a few hundred thousand
objects a full collection stops every thread for ~50 ms. CPython starts one
whenever the number of long-lived objects has grown by a quarter, which a
server taking thousands of reservations a second does every few seconds:
the benchmark's p99 for reservations was 50 ms with them and 7 ms without
(benchmarks/README.md).

The young generations are collected as usual (cheap: they hold only recent
objects). Full collections are taken off CPython's schedule and run by the
server's event loop at a fixed interval instead: one pause every few
minutes. Cyclic garbage that outlives the young generations (rare: records
are freed by reference counting) waits for the next full collection.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

INTERVAL = 300.0  # seconds between full collections
# A full collection after this many collections of the middle generation: never.
_NEVER = 1 << 30


class FullCollections:
    """Started by the event loop; ``tick()`` after each loop iteration."""

    def __init__(self, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._saved: tuple[int, int, int] | None = None
        self._next = 0.0

    def start(self) -> None:
        young, middle, _ = self._saved = gc.get_threshold()
        gc.set_threshold(young, middle, _NEVER)
        self._next = self.clock() + self.interval

    def stop(self) -> None:
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            self._saved = None

    def tick(self) -> None:
        now = self.clock()
        if now < self._next:
            return
        started = time.perf_counter()
        found = gc.collect()
        took = time.perf_counter() - started
        self._next = self.clock() + self.interval
        # Every thread waited this long: worth a line when it is noticeable.
        log.log(logging.INFO if took >= 0.1 else logging.DEBUG,
                "full garbage collection: %d unreachable objects freed in %.3f s", found, took)
