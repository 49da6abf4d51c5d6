"""The HTTP server: waitress, with an event-loop fast path and a stricter parser.

Event-loop fast path. Stock waitress parses a request on its event-loop
thread, hands it to a worker thread, and wakes the loop again to send the
answer: on one core those hand-offs cost more than our requests themselves.
Requests to endpoints that never block (the app says which) are served on
the loop thread itself; the others still go to the worker threads. A request
served on the loop that wrote to the state database does not wait for the
commit: its response is held, and sent when the writer thread reports the
commit (group commit then batches the commits of many connections); if the
commit failed, a 500 is sent instead and the connection closed. Code that
would block on the loop raises ``loop.MustNotBlock`` before changing
anything, and the request is handed to a worker thread (see loop.py).

Stricter parser. waitress 3.0 accepts two framings that RFC 9112 says a
server must refuse, both request-smuggling vectors behind a proxy:

* a request with both ``Content-Length`` and ``Transfer-Encoding`` (waitress
  frames it by Transfer-Encoding and keeps the connection open);
* a header block ended by bare LF line endings (waitress waits for CRLF CRLF
  until the header limit or the channel timeout).

``StrictRequestParser`` answers both with 400 and closes the connection.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import waitress
import waitress.task
from waitress import wasyncore
from waitress.buffers import OverflowableBuffer
from waitress.channel import ClientDisconnected, HTTPChannel
from waitress.parser import ParsingError
from waitress.task import ThreadedTaskDispatcher
from waitress.utilities import BadRequest, find_double_newline

from . import loop
from .collector import FullCollections
from .waitress_fast import FastRequestParser, FastWSGITask

log = logging.getLogger("wfm_orchestrator.server")

# (method, path) -> True when the endpoint never blocks (api.app.nonblocking).
Nonblocking = Callable[[str, str], bool]

MAX_BODY = 1024 * 1024
# waitress refuses a body whose length is >= its limit; the API accepts exactly 1 MiB.
WAITRESS_BODY_LIMIT = MAX_BODY + 1
MAX_HEADER = 64 * 1024


class StrictRequestParser(FastRequestParser):
    def received(self, data: bytes) -> int:
        if self.body_rcv is None and not self.completed:
            pending = self.header_plus + data
            if find_double_newline(pending) < 0 and b"\n\n" in pending.lstrip():
                self._refuse("bare LF line endings: HTTP requires CRLF")
                return len(data)
        return super().received(data)

    def parse_header(self, header_plus: bytes) -> None:
        lowered = b"\r\n" + header_plus.lower()
        if b"\r\ncontent-length:" in lowered and b"\r\ntransfer-encoding:" in lowered:
            raise ParsingError("both Content-Length and Transfer-Encoding")
        super().parse_header(header_plus)

    def _refuse(self, reason: str) -> None:
        # As waitress does for over-long headers: a minimal request line for
        # the error response, then an error that closes the connection.
        super().parse_header(b"GET / HTTP/1.0\r\n")
        self.error = BadRequest(reason)
        self.completed = True


class StrictChannel(HTTPChannel):
    parser_class = StrictRequestParser
    task_class = FastWSGITask
    _environ_base: dict | None = None  # FastWSGITask's, built at the first request


class LoopDispatcher(ThreadedTaskDispatcher):
    """Decides, request by request, between the loop thread and a worker thread."""

    def __init__(self, nonblocking: Nonblocking):
        super().__init__()
        self.nonblocking = nonblocking
        self.loop_thread: int | None = None  # set when the loop starts (run_loop)

    def add_task(self, channel: LoopChannel) -> None:
        # waitress calls this on the loop thread for a channel's first queued
        # request, and at the end of service() (on whichever thread served
        # the previous one) for the next.
        writing = channel._writing
        if channel.held is not None or (writing is not None and writing.tickets):
            channel.resume = True  # answers leave in order: after the held one
            return
        if threading.get_ident() == self.loop_thread:
            request = channel.requests[0]
            if request.error is not None or self.nonblocking(request.command, request.path):
                channel.serve_on_loop = True
                return
        super().add_task(channel)

    def to_worker(self, channel: LoopChannel) -> None:
        super().add_task(channel)


class Mailbox:
    """Work that other threads hand to the loop thread: one wake-up per burst.

    The writer thread finishes a batch of commits at once; waking the loop
    once per batch rather than once per request saves a pipe write and a
    loop turn per request. The loop runs the work after each poll (run_loop),
    not as a waitress trigger thunk: waitress runs thunks under a bare
    ``except:``, which would swallow the SystemExit of a SIGTERM.
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


class Held:
    """A response waiting for the commits of its request."""

    __slots__ = ("pending", "output", "error")

    def __init__(self, pending: int, output: list[bytes]):
        self.pending = pending
        self.output = output
        self.error: BaseException | None = None


class LoopChannel(StrictChannel):
    serve_on_loop = False  # the dispatcher chose the loop for requests[0]
    held: Held | None = None
    resume = False  # a request waits behind the held response
    _writing: loop.LoopRequest | None = None  # the loop request now writing its answer
    _output: list[bytes] | None = None

    # --- the loop decides -------------------------------------------------------

    def received(self, data: bytes) -> bool:
        result = super().received(data)
        self._serve_on_loop()
        return result

    # readable() and writable() run for every connection at every loop turn:
    # waitress' conditions are inlined rather than called through super().

    def readable(self) -> bool:
        return self.held is None and not (
            self.will_close or self.close_when_flushed or self.total_outbufs_len
            or len(self.requests) > self.adj.channel_request_lookahead)

    def writable(self) -> bool:
        # While an answer is held: only to send earlier answers, never to close.
        return bool(self.total_outbufs_len or (
            self.held is None and (self.will_close or self.close_when_flushed)))

    def handle_write(self) -> None:
        if self.held is not None:
            self._flush()  # not waitress' handle_write: it may close the connection
            return
        super().handle_write()

    def _serve_on_loop(self) -> None:
        while self.serve_on_loop and self.held is None:
            self.serve_on_loop = False
            request = loop.enter()
            self._writing, self._output = request, []
            try:
                self.service()
            except loop.MustNotBlock as e:
                # Raised before anything changed and before any output.
                log.debug("%s: handed to a worker thread (%s)", self.requests[0].path, e)
                self._append(self._output)
                self._flush()
                self.server.task_dispatcher.to_worker(self)
                return
            finally:
                loop.leave()
                output, self._writing, self._output = self._output, None, None
            if request.tickets:
                self._hold(request.tickets, output)
            else:
                self._append(output)
        self._flush()

    # --- answers ------------------------------------------------------------------

    def write_soon(self, data: bytes) -> int:
        if self._writing is None or loop.current() is not self._writing:
            return super().write_soon(data)  # a worker thread
        if not self.connected:
            raise ClientDisconnected
        # Kept until service() returns: sent in one piece, or held for a commit.
        self._output.append(bytes(data))
        return len(data)

    def _append(self, output: list[bytes]) -> None:
        # As write_soon, but on the loop: never wait for the buffer to drain.
        with self.outbuf_lock:
            for data in output:
                if self.current_outbuf_count >= self.adj.outbuf_high_watermark:
                    self.outbufs.append(OverflowableBuffer(self.adj.outbuf_overflow))
                    self.current_outbuf_count = 0
                self.outbufs[-1].append(data)
                self.current_outbuf_count += len(data)
                self.total_outbufs_len += len(data)

    def _flush(self) -> None:
        if self.total_outbufs_len and self.connected:
            with self.outbuf_lock:
                self._flush_exception(self._flush_some)

    # --- holding an answer until its commits ------------------------------------------

    def _hold(self, tickets: list, output: list[bytes]) -> None:
        held = self.held = Held(len(tickets), output)
        post = self.server.mailbox.post
        for ticket, on_failure in tickets:
            def committed(ticket, on_failure=on_failure):
                # On the writer thread: let the loop thread take it from here.
                post(lambda: self._committed(held, ticket, on_failure))
            ticket.add_done_callback(committed)

    def _committed(self, held: Held, ticket: Any, on_failure: Callable[[], None]) -> None:
        if ticket.error is not None and held.error is None:
            held.error = ticket.error
            try:
                on_failure()
            except Exception:  # noqa: BLE001 - the client must still get its answer
                log.exception("recovering from a failed commit")
        held.pending -= 1
        if held.pending:
            return
        self.held = None
        if not self.connected:
            return  # the client went away meanwhile
        if held.error is None:
            self._append(held.output)
        else:
            self._refuse_failed_commit(held.error)
        if self.resume:
            self.resume = False
            if self.requests and not self.close_when_flushed:
                self.server.add_task(self)
        self._serve_on_loop()

    def _refuse_failed_commit(self, error: BaseException) -> None:
        log.error("%s: the state database refused the write (%s): answered 500",
                  self.addr[0] if self.addr else "client", error)
        body = json.dumps({"title": "State database unavailable",
                           "description": f"the state database refused a write: {error}"}
                          ).encode()
        head = ("HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n"
                "Server: wfm-orchestrator\r\n\r\n").encode()
        self._append([head, body])
        with self.requests_lock:
            # What was pipelined behind it is not run: the connection closes.
            for request in self.requests:
                request.close()
            self.requests = []
            self.close_when_flushed = True


@functools.lru_cache(maxsize=4)
def _http_date(second: int) -> str:
    return _waitress_http_date(second)


def _cached_http_date(when: float) -> str:
    return _http_date(int(when))


# waitress formats the Date header anew for every response: once a second is enough.
_waitress_http_date = waitress.task.build_http_date
waitress.task.build_http_date = _cached_http_date


def create_server(app: Any, host: str, port: int, threads: int,
                  nonblocking: Nonblocking | None = None) -> Any:
    """A waitress server with the limits documented in docs/security.md.

    ``nonblocking(method, path)`` names the requests served on the event loop
    (none when omitted: stock waitress dispatching).
    """
    dispatcher = LoopDispatcher(nonblocking or (lambda method, path: False))
    dispatcher.set_thread_count(threads)
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
        _dispatcher=dispatcher,
    )
    server.channel_class = LoopChannel
    server.mailbox = Mailbox(server.trigger)
    pull_trigger = server.pull_trigger
    poll = wasyncore.poll2 if server.adj.asyncore_use_poll else wasyncore.poll

    def run_loop() -> None:
        # waitress' loop, plus the end-of-iteration hook (commits in batches)
        # and the garbage collector's full collections (collector.py).
        dispatcher.loop_thread = threading.get_ident()
        loop.become_loop_thread()
        collections = FullCollections()
        collections.start()
        try:
            while server._map:
                poll(server.adj.asyncore_loop_timeout, server._map)
                server.mailbox.run()
                loop.iteration_end()
                collections.tick()
        except (SystemExit, KeyboardInterrupt):
            dispatcher.shutdown()
            raise
        finally:
            collections.stop()

    def wake_loop() -> None:
        # Channels call this after each answer; the loop itself needs no waking.
        if threading.get_ident() != dispatcher.loop_thread:
            pull_trigger()

    server.run, server.pull_trigger = run_loop, wake_loop
    return server
