"""What code running on the HTTP server's event-loop thread may and may not do.

The server (server.py) answers requests of non-blocking endpoints on its
event-loop thread, skipping the hand-off to a worker thread that costs more
than the request itself. Such a request must never wait:

* a durable write registers its commit ticket with ``defer_commit`` instead of
  waiting for it; the server holds the response until the commit is done
  (and answers 500 instead if it failed);
* anything else that would block calls ``must_not_block``, which raises
  ``MustNotBlock`` on the loop: the server then hands the request, untouched
  so far, to a worker thread, where the call simply blocks.

Off the loop (worker threads, background loops, tests) ``defer_commit``
returns False and ``must_not_block`` does nothing.

The loop thread also batches: writes queued while it serves the ready
connections are handed to the store's writer once per loop iteration
(``at_iteration_end``), so that one commit covers them all.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

_local = threading.local()


class MustNotBlock(BaseException):
    """Raised on the event loop before a blocking call.

    A BaseException so that Falcon's error handlers (which catch Exception)
    let it through to the server unchanged.
    """


class LoopRequest:
    """What one request served on the loop left to do: the commits to wait for."""

    __slots__ = ("tickets",)

    def __init__(self) -> None:
        # (ticket, called on the loop if its commit failed)
        self.tickets: list[tuple[Any, Callable[[], None]]] = []


def become_loop_thread() -> None:
    """Called by the server on the thread that runs its event loop."""
    _local.is_loop = True
    _local.at_end = []


def on_loop_thread() -> bool:
    return getattr(_local, "is_loop", False)


def at_iteration_end(callback: Callable[[], None]) -> None:
    """On the loop thread: call ``callback`` once, when this loop iteration ends."""
    _local.at_end.append(callback)


def iteration_end() -> None:
    """Run what was deferred to the end of this iteration (server, or before a wait)."""
    callbacks = _local.at_end
    while callbacks:
        callbacks.pop(0)()


def enter() -> LoopRequest:
    request = LoopRequest()
    _local.request = request
    return request


def leave() -> None:
    _local.request = None


def current() -> LoopRequest | None:
    return getattr(_local, "request", None)


def defer_commit(ticket: Any, on_failure: Callable[[], None]) -> bool:
    """On the loop: remember ``ticket`` for the response to wait for; True if so."""
    request = current()
    if request is None:
        return False
    request.tickets.append((ticket, on_failure))
    return True


def must_not_block(what: str) -> None:
    if current() is not None:
        raise MustNotBlock(what)
