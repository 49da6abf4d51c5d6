"""The HTTP server: waitress, with an event-loop fast path (``fast_path = on``) or stock.

Fast path. Stock waitress parses a request on its event-loop thread, hands
it to a worker thread, and wakes the loop again to send the answer: on one
core those hand-offs cost more than our requests themselves. Requests to
endpoints that never block (the app says which) are served on the loop
thread itself (channel.py); the others still go to the worker threads.

The loop, turn by turn (``run``):

1. poll the sockets; the channels parse and serve what arrived;
2. run the work other threads posted (commits reported by the store's writer:
   held answers leave);
3. answer 500 for held answers past ``COMMIT_TIMEOUT``;
4. run the turn's end callbacks: the store's ``flush`` (one commit for every
   write of the turn: the group commit's batch) and the access log's lines;
5. the garbage collector's full collections, on their own schedule (collector.py).

``fast_path = off`` runs waitress' own dispatcher, parser and task (every
request on a worker thread), keeping the strict parser's refusals and the
same loop, for steps 4 and 5.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import waitress
from waitress import wasyncore

from ..api.media import MAX_BODY
from ..store import refuse_waits
from .channel import Held, LoopChannel, StockChannel
from .collector import FullCollections
from .dispatcher import LoopDispatcher, Mailbox, Nonblocking

# waitress refuses a body whose length is >= its limit; the API accepts exactly 1 MiB.
WAITRESS_BODY_LIMIT = MAX_BODY + 1
MAX_HEADER = 64 * 1024


def create_server(app: Any, host: str, port: int, threads: int,
                  nonblocking: Nonblocking | None = None, *, fast_path: bool = True,
                  turn_end: Iterable[Callable[[], None]] = ()) -> Any:
    """A waitress server with the limits documented in docs/security.md.

    ``nonblocking(method, path)`` names the requests served on the event loop
    (none when omitted: every request on a worker thread). ``turn_end``: called
    at the end of each loop turn (the store's ``flush``).
    """
    options: dict[str, Any] = {}
    dispatcher = None
    if fast_path:
        dispatcher = LoopDispatcher(nonblocking or (lambda method, path: False))
        dispatcher.set_thread_count(threads)
        options["_dispatcher"] = dispatcher
    server = waitress.create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        ident="wfm-orchestrator",
        max_request_body_size=WAITRESS_BODY_LIMIT,  # 413 before the application runs
        max_request_header_size=MAX_HEADER,  # 431 beyond
        connection_limit=1000,
        channel_timeout=60,
        cleanup_interval=30,
        expose_tracebacks=False,
        # No proxy is trusted and nothing here reads X-Forwarded-* or Forwarded:
        # skip the middleware that would strip them from every request.
        clear_untrusted_proxy_headers=False,
        **options,
    )
    server.channel_class = LoopChannel if fast_path else StockChannel
    server.mailbox = Mailbox(server.trigger)
    server.loop_thread = None
    ending: list[Callable[[], None]] = []  # this turn's, from the application
    server.at_turn_end = ending.append
    every_turn = list(turn_end)
    held: collections.deque[tuple[float, Any, Held]] = collections.deque()

    def hold(channel: Any, answer: Held) -> None:
        # One timeout for all: the deque stays in deadline order. Entries leave
        # at the next turn once answered, so it stays as short as the commits pending.
        held.append((answer.deadline, channel, answer))

    server.hold = hold
    pull_trigger = server.pull_trigger
    poll = wasyncore.poll2 if server.adj.asyncore_use_poll else wasyncore.poll

    def enter_loop() -> None:
        """Make the calling thread the loop's (run_loop does; so may a benchmark)."""
        server.loop_thread = threading.get_ident()
        if dispatcher is not None:
            dispatcher.loop_thread = server.loop_thread
        refuse_waits()  # a wait here would stall every connection

    def turn(timeout: float) -> None:
        """One turn of the loop: steps 1 to 4 of the module's docstring."""
        poll(timeout, server._map)
        server.mailbox.run()
        if held:
            now = time.monotonic()
            while held:
                deadline, channel, answer = held[0]
                pending = channel.held is answer
                if pending and deadline > now:
                    break
                held.popleft()  # answered (most, in order), or out of time
                if pending:
                    channel.expire(answer)
        while ending:
            ending.pop(0)()
        for callback in every_turn:
            callback()

    def run_loop() -> None:
        enter_loop()
        full_collections = FullCollections()
        full_collections.start()
        try:
            while server._map:
                turn(server.adj.asyncore_loop_timeout)
                full_collections.tick()
        except (SystemExit, KeyboardInterrupt):
            server.task_dispatcher.shutdown()
            raise
        finally:
            full_collections.stop()

    def wake_loop() -> None:
        # Channels call this after each answer; the loop itself needs no waking.
        if threading.get_ident() != server.loop_thread:
            pull_trigger()

    def swap(app: Any, nonblocking: Nonblocking | None,
             turn_end: Iterable[Callable[[], None]]) -> None:
        """Serve ``app`` from now on (a standby that took the lead, cli.py): the turn's
        callbacks first, so that no write of the new app waits for a flush nobody does;
        its non-blocking requests last, so that the loop serves only the new app's."""
        every_turn.extend(turn_end)
        server.application = app
        if dispatcher is not None and nonblocking is not None:
            dispatcher.nonblocking = nonblocking

    server.swap = swap
    server.enter_loop, server.turn = enter_loop, turn
    server.run, server.pull_trigger = run_loop, wake_loop
    return server
