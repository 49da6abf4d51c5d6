"""Who serves a request: the event-loop thread or a worker thread; work handed to the loop."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from waitress.task import ThreadedTaskDispatcher

log = logging.getLogger("wfm_orchestrator.server")

# (method, path) -> True when the endpoint never blocks (api.app.nonblocking_requests).
Nonblocking = Callable[[str, str], bool]


# How much nicer the worker threads are than the process (the loop thread): the loop is
# served first when both want the CPU (docs/server.md, Lists).
WORKER_NICE = 10
_refused: list[OSError] = []  # said once, not once per thread


class LoopDispatcher(ThreadedTaskDispatcher):
    """Decides, request by request, between the loop thread and a worker thread."""

    def __init__(self, nonblocking: Nonblocking):
        super().__init__()
        self.nonblocking = nonblocking
        self.loop_thread: int | None = None  # set when the loop starts

    def add_task(self, channel: Any) -> None:
        # waitress calls this on the loop thread for a channel's first queued
        # request, and at the end of service() (on whichever thread served
        # the previous one) for the next.
        current = channel.loop_request
        if channel.held is not None or (current is not None and current.tickets):
            channel.resume = True  # answers leave in order: after the held one
            return
        if threading.get_ident() == self.loop_thread:
            request = channel.requests[0]
            if request.error is not None or self.nonblocking(request.command, request.path):
                channel.serve_on_loop = True
                return
        super().add_task(channel)

    def to_worker(self, channel: Any) -> None:
        super().add_task(channel)

    def handler_thread(self, thread_no: int) -> None:
        # A worker thread for its whole life: it gives the CPU to the loop thread first.
        # Rendering a whole list, a worker is busy for seconds; at the same priority the
        # kernel let it run its time slice out before the loop's requests (p99 of GET
        # status 20 ms, benchmarks/README.md). A nice value only goes up without
        # privileges: set once, never lowered back.
        tid = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, tid,
                           min(19, os.getpriority(os.PRIO_PROCESS, tid) + WORKER_NICE))
        except OSError as e:  # a sandbox may refuse it: served as before, said once
            if not _refused:
                _refused.append(e)
                log.warning("worker threads: their priority could not be lowered (%s)", e)
        super().handler_thread(thread_no)


class Mailbox:
    """Work that other threads hand to the loop thread: one wake-up per burst.

    The writer thread finishes a batch of commits at once; waking the loop
    once per batch rather than once per request saves a pipe write and a
    loop turn per request. The loop runs the work after each poll, not as a
    waitress trigger thunk: waitress runs thunks under a bare ``except:``,
    which would swallow the SystemExit of a SIGTERM.
    """

    def __init__(self, trigger: Any):
        self._trigger = trigger
        self._items: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def post(self, work: Callable[[], None]) -> None:
        with self._lock:
            self._items.append(work)
            first = len(self._items) == 1
        if first:
            try:
                self._trigger.pull_trigger()
            except OSError:
                pass  # the server has closed: nobody is left to answer

    def run(self) -> None:
        """On the loop thread: do what was posted."""
        if not self._items:
            return
        with self._lock:
            items, self._items = self._items, []
        for work in items:
            try:
                work()
            except Exception:  # noqa: BLE001 - the others must still run
                log.exception("loop work failed")
