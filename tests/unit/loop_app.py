"""A small Falcon app that stands in for the orchestrator in test_server_loop.py.

Its tickets are finished by the test, so a held answer can be observed before and
after its commit; the ``served`` fixture (tests/unit/conftest.py) serves it.
"""

from __future__ import annotations

import threading

import falcon

from wfm_orchestrator.api import errors
from wfm_orchestrator.api.media import json_handler
from wfm_orchestrator.api.serving import HandToWorker, answer_after, loop_request
from wfm_orchestrator.store import Ticket

NONBLOCKING = {"/fast", "/commit", "/keys"}


class Fast:
    def on_get(self, req, resp):
        resp.media = {"thread": threading.current_thread().name}


class Commit:
    """Registers a ticket the test finishes (as a durable write on the loop would)."""

    def __init__(self):
        self.tickets: list[Ticket] = []
        self.arrived = threading.Event()

    def on_post(self, req, resp):
        ticket = Ticket()
        self.tickets.append(ticket)
        self.arrived.set()
        answer_after(req, ticket)
        resp.media = {"committed": "yes"}


class Keys:
    """Would block (a key fetch): must leave the loop before doing anything."""

    def __init__(self):
        self.calls = 0

    def on_get(self, req, resp):
        self.calls += 1
        if loop_request(req) is not None:
            raise HandToWorker("a key fetch")
        resp.media = {"thread": threading.current_thread().name}


class Slow:
    """A blocking endpoint (not declared nonblocking): served by a worker thread."""

    def __init__(self):
        self.release = threading.Event()

    def on_get(self, req, resp):
        self.release.wait(10)
        resp.media = {"thread": threading.current_thread().name}


def loop_app() -> tuple[falcon.App, Commit, Keys, Slow]:
    """The app, and the three resources a test drives or inspects."""
    app = falcon.App()
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = json_handler()
    errors.install(app)  # the one mapping of errors to answers
    commit, keys, slow = Commit(), Keys(), Slow()
    app.add_route("/fast", Fast())
    app.add_route("/commit", commit)
    app.add_route("/commit-in-worker", commit)
    app.add_route("/keys", keys)
    app.add_route("/slow", slow)
    return app, commit, keys, slow
