"""The connection: waitress' channel, serving on the event loop and holding answers.

A request the dispatcher chose for the loop (dispatcher.py) is served right
where it was parsed, on the loop thread. Its answer is kept until the
application returns; if the application left commit tickets in its
``LoopRequest`` (api/serving.py), the answer is held, and sent when the
store's writer reports the commits, or replaced by the API's 500 if one was
refused or not done within ``COMMIT_TIMEOUT`` (the connection then closes).
Answers leave in request order: a pipelined request waits behind a held one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from waitress.buffers import OverflowableBuffer
from waitress.channel import ClientDisconnected, HTTPChannel

from ..api.serving import COMMIT_TIMEOUT, HandToWorker, failure_answer
from ..errors import CommitTimeout, StoreError
from ..store import Ticket
from .parser import StrictRequestParser, StrictStockParser
from .task import ClosingErrorTask, FastWSGITask

log = logging.getLogger("wfm_orchestrator.server")


class LoopRequest:
    """What the application may leave to the loop (api/serving.py's ``LoopRequest``)."""

    __slots__ = ("tickets", "at_turn_end")

    def __init__(self, at_turn_end: Callable[[Callable[[], None]], None]) -> None:
        self.tickets: list[Ticket] = []
        self.at_turn_end = at_turn_end


class Held:
    """An answer waiting for the commits of its request."""

    __slots__ = ("pending", "output", "error", "method", "path", "deadline")

    def __init__(self, pending: int, output: list[bytes], method: str, path: str):
        self.pending = pending
        self.output = output
        self.error: StoreError | None = None
        self.method = method
        self.path = path
        self.deadline = time.monotonic() + COMMIT_TIMEOUT


class StockChannel(HTTPChannel):
    """``fast_path = off``: waitress' own channel and task, with the strict parser and an
    error answer that says once that it closes."""

    parser_class = StrictStockParser
    error_task_class = ClosingErrorTask


class LoopChannel(HTTPChannel):
    # Set by waitress' __init__ (untyped): declared for mypy.
    requests: list[Any]
    current_outbuf_count: int
    close_when_flushed: bool

    parser_class = StrictRequestParser
    task_class = FastWSGITask
    error_task_class = ClosingErrorTask
    _environ_base: dict | None = None  # FastWSGITask's, built at the first request
    serve_on_loop = False  # the dispatcher chose the loop for requests[0]
    held: Held | None = None
    resume = False  # a request waits behind the held answer
    loop_request: LoopRequest | None = None  # the request the loop is serving now
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
        server = self.server
        while self.serve_on_loop and self.held is None:
            self.serve_on_loop = False
            request = self.loop_request = LoopRequest(server.at_turn_end)
            self._output = []
            head = self.requests[0]
            # A request waitress refused (400, 431, ...) has neither: it is answered here.
            method, path = getattr(head, "command", ""), getattr(head, "path", "")
            try:
                self.service()
            except HandToWorker as e:
                # Raised before anything changed and before any output. Off the loop
                # before the hand-off: the worker must not see this request as the loop's.
                self.loop_request = None
                log.debug("%s: handed to a worker thread (%s)", path, e)
                self._append(self._output)
                self._flush()
                server.task_dispatcher.to_worker(self)
                return
            finally:
                output, self.loop_request, self._output = self._output, None, None
            if request.tickets:
                self._hold(request.tickets, output, method, path)
            else:
                self._append(output)
        self._flush()

    # --- answers ------------------------------------------------------------------

    def write_soon(self, data: bytes) -> int:
        if self.loop_request is None or threading.get_ident() != self.server.loop_thread:
            return super().write_soon(data)  # a worker thread
        if not self.connected:
            raise ClientDisconnected
        # Kept until service() returns: sent in one piece, or held for a commit.
        self._output.append(bytes(data))  # type: ignore[union-attr]
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

    def _hold(self, tickets: list[Ticket], output: list[bytes], method: str, path: str) -> None:
        held = self.held = Held(len(tickets), output, method, path)
        server = self.server
        post = server.mailbox.post
        server.hold(self, held)
        for ticket in tickets:
            def committed(ticket: Ticket) -> None:
                # On the writer thread: let the loop thread take it from here.
                post(lambda: self._committed(held, ticket))
            ticket.add_done_callback(committed)

    def _committed(self, held: Held, ticket: Ticket) -> None:
        if self.held is not held:
            return  # answered already (its time ran out)
        if held.error is None:
            held.error = ticket.failure()
        held.pending -= 1
        if not held.pending:
            self._answer(held)

    def expire(self, held: Held) -> None:
        """On the loop: ``held`` was not committed within COMMIT_TIMEOUT."""
        if self.held is held:
            held.error = held.error or CommitTimeout(COMMIT_TIMEOUT)
            self._answer(held)

    def _answer(self, held: Held) -> None:
        self.held = None
        if not self.connected:
            return  # the client went away meanwhile
        if held.error is None:
            self._append(held.output)
        else:
            self._refuse(held)
        if self.resume:
            self.resume = False
            if self.requests and not self.close_when_flushed:
                self.server.add_task(self)
        self._serve_on_loop()

    def _refuse(self, held: Held) -> None:
        status, headers, body = failure_answer(held.method, held.path, held.error)  # type: ignore[arg-type]
        lines = [f"HTTP/1.1 {status}", *(f"{name}: {value}" for name, value in headers),
                 f"Content-Length: {len(body)}", "Connection: close",
                 f"Server: {self.adj.ident}", "", ""]
        self._append(["\r\n".join(lines).encode("latin-1"), body])
        with self.requests_lock:
            # What was pipelined behind it is not run: the connection closes.
            for request in self.requests:
                request.close()
            self.requests = []
            self.close_when_flushed = True
