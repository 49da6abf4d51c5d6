"""How an answer waits for its commit: the contract between the API and the HTTP server.

The server (wfm_orchestrator.http) may serve a request of a non-blocking
endpoint on its event-loop thread. It says so through the WSGI environ:
``environ[LOOP]`` is then the server's ``LoopRequest``, and only then.

* ``answer_after(req, ticket)``: on a worker thread, waits for the commit
  (``COMMIT_TIMEOUT``; a refused or late commit raises ``StoreError``, which
  api/errors.py answers with a 500). On the loop it must not wait: the ticket
  joins ``LoopRequest.tickets`` and the server holds the answer until the
  commit, or answers ``failure_answer(...)`` if it is refused or not done
  within the same ``COMMIT_TIMEOUT``: the same 500 as a worker's.
* ``HandToWorker``: raised on the loop, before anything changed, by code that
  would block (a fetch of the identity provider's keys): the server runs the
  request again, from the start, on a worker thread.
* ``LoopRequest.at_turn_end(callback)``: work to do once the loop's turn
  ends (the access log writes the turn's lines together).

The server hands the store's queued writes to its writer once per turn
(``Store.flush``), so that one commit covers every request of the turn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import falcon

from ..errors import StoreError
from ..store import Ticket
from .errors import error_body, store_unavailable

LOOP = "wfm.loop"
COMMIT_TIMEOUT = 30.0  # seconds an answer waits for its commit, on the loop or on a worker


class LoopRequest(Protocol):
    tickets: list[Ticket]

    def at_turn_end(self, callback: Callable[[], None]) -> None: ...


class HandToWorker(BaseException):  # noqa: N818 - an instruction to the server, not an error
    """Raised on the event loop before a blocking call: serve this request on a worker.

    A BaseException so that Falcon's error handlers (which catch Exception)
    let it through to the server unchanged.
    """


def loop_request(req: falcon.Request) -> LoopRequest | None:
    """The server's LoopRequest when ``req`` is served on its event loop, else None."""
    return req.env.get(LOOP)


def answer_after(req: falcon.Request, ticket: Ticket) -> None:
    """Let the answer to ``req`` leave only once ``ticket`` is committed."""
    loop = req.env.get(LOOP)
    if loop is None:
        ticket.wait(COMMIT_TIMEOUT)
    else:
        loop.tickets.append(ticket)


def failure_answer(method: str, path: str, error: StoreError
                   ) -> tuple[str, list[tuple[str, str]], bytes]:
    """(status, headers, body) of a held answer whose commit failed: api/errors.py's 500."""
    exc = store_unavailable(method, path, error)
    return (falcon.code_to_http_status(exc.status),
            [("Content-Type", falcon.MEDIA_JSON), ("Vary", "Accept")],
            error_body(exc).encode())
