"""The server's event-loop fast path (http/, api/serving.py) with a real waitress server.

A small Falcon app (tests/unit/loop_app.py, served by the ``served`` fixture) stands in
for the orchestrator: its tickets are finished by the test, so a held answer can be
observed before and after its commit.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import falcon

from wfm_orchestrator.api import serving
from wfm_orchestrator.http import channel
from wfm_orchestrator.http.server import create_server

from ..poll import poll_until
from .conftest import stop_served

STATUS_LINE = re.compile(rb"(?:^|\n)HTTP/1\.[01] \d{3} ")


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.settimeout(0.3)
    return sock


def request(method: str, path: str, close: bool = False) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    body = "{}" if method == "POST" else ""
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}").encode()


def read_for(sock: socket.socket, seconds: float) -> bytes:
    """Whatever arrives within ``seconds`` (stops early at end of stream)."""
    data = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            break
        data += chunk
    return data


def test_nonblocking_request_is_answered_on_the_loop_thread(served):
    port, *_ = served
    with connect(port) as sock:
        sock.sendall(request("GET", "/fast"))
        reply = read_for(sock, 0.5)
    assert reply.startswith(b"HTTP/1.1 200 OK")
    assert b'"thread":"loop"' in reply


def test_a_request_waitress_refuses_is_answered_on_the_loop_and_closed(served):
    """Garbage, bare-LF headers, HTTP/1.0 with Transfer-Encoding: 400 from the loop thread,
    then the connection closes."""
    port, *_ = served
    for data in (b"\x00\x01\x02 garbage\r\n\r\n" + request("GET", "/fast"),
                 b"GET /fast HTTP/1.1\r\nHost: x\nX-Smuggle: 1\r\n\r\n",
                 b"POST /fast HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                 + request("GET", "/fast")):
        with connect(port) as sock:
            sock.sendall(data)
            reply = read_for(sock, 1.0)
            assert sock.recv(1) == b""  # closed
        assert reply.startswith(b"HTTP/1.0 400 Bad Request"), reply
        assert len(STATUS_LINE.findall(reply)) == 1  # what was pipelined behind it is not run


def test_answer_is_held_until_its_commit(served):
    """The 200 of a durable write leaves only once its ticket is committed."""
    port, commit, *_ = served
    with connect(port) as sock:
        sock.sendall(request("POST", "/commit"))
        assert commit.arrived.wait(5)
        assert read_for(sock, 0.5) == b""  # not committed yet: nothing sent
        commit.tickets[0]._finish()
        reply = read_for(sock, 0.5)
    assert reply.startswith(b"HTTP/1.1 200 OK")
    assert b'"committed":"yes"' in reply


def test_failed_commit_answers_500_and_closes(served):
    port, commit, *_ = served
    with connect(port) as sock:
        sock.sendall(request("POST", "/commit") + request("GET", "/fast"))
        assert commit.arrived.wait(5)
        commit.tickets[0]._finish(OSError("disk I/O error"))
        reply = read_for(sock, 1.0)
    assert reply.startswith(b"HTTP/1.1 500 Internal Server Error")
    body = json.loads(reply.partition(b"\r\n\r\n")[2].split(b"HTTP/1.1")[0])
    assert body["title"] == "State database unavailable" and "disk I/O error" in body["message"]
    assert b"Connection: close" in reply
    assert reply.count(b"HTTP/1.1") == 1  # the pipelined GET was not run
    # (The owner of the state is told by the store's writer: test_store.py, and
    # test_api_reservations.py for the resource manager's resync.)


def body_of(reply: bytes) -> bytes:
    return reply.partition(b"\r\n\r\n")[2]


def test_a_failed_commit_gives_the_same_answer_on_the_loop_and_on_a_worker(served):
    """One mapping of errors to answers (api/errors.py), whichever thread served."""
    port, commit, *_ = served
    replies = []
    for path in ("/commit", "/commit-in-worker"):
        commit.arrived.clear()
        with connect(port) as sock:
            sock.sendall(request("POST", path))
            assert commit.arrived.wait(5)
            time.sleep(0.1)  # the worker is waiting in answer_after
            commit.tickets[-1]._finish(OSError("disk I/O error"))
            replies.append(read_for(sock, 1.0))
    on_loop, on_worker = replies
    assert on_loop.startswith(b"HTTP/1.1 500 Internal Server Error")
    assert on_worker.startswith(b"HTTP/1.1 500 Internal Server Error")
    assert body_of(on_loop) == body_of(on_worker)
    assert json.loads(body_of(on_loop)) == {
        "title": "State database unavailable",
        "description": "the state database refused a write: disk I/O error",
        "message": "the state database refused a write: disk I/O error"}


def test_a_held_answer_not_committed_in_time_gets_the_workers_500(served, monkeypatch):
    """One commit timeout (serving.COMMIT_TIMEOUT) for held answers and waiting workers."""
    monkeypatch.setattr(serving, "COMMIT_TIMEOUT", 0.3)
    monkeypatch.setattr(channel, "COMMIT_TIMEOUT", 0.3)
    port, commit, *_ = served
    replies = []
    for path in ("/commit", "/commit-in-worker"):
        with connect(port) as sock:
            sock.sendall(request("POST", path))
            replies.append(read_for(sock, 2.5))  # the loop checks deadlines every second
    on_loop, on_worker = replies
    for reply in replies:
        assert reply.startswith(b"HTTP/1.1 500 Internal Server Error"), reply
        assert b"did not commit within 0.3 s" in reply
    assert body_of(on_loop) == body_of(on_worker)
    commit.tickets[0]._finish()  # a late commit after the 500 changes nothing
    time.sleep(0.1)


def test_pipelined_answers_keep_their_order_behind_a_held_one(served):
    port, commit, *_ = served
    with connect(port) as sock:
        sock.sendall(request("POST", "/commit") + request("GET", "/fast")
                     + request("GET", "/slow"))
        assert commit.arrived.wait(5)
        assert read_for(sock, 0.3) == b""  # the GET waits behind the held POST
        commit.tickets[0]._finish()
        first = read_for(sock, 0.5)
        assert first.count(b"HTTP/1.1 200 OK") == 2  # POST then GET /fast
        assert first.index(b"committed") < first.index(b'"thread":"loop"')
        served[3].release.set()
        second = read_for(sock, 0.5)
    assert second.startswith(b"HTTP/1.1 200 OK") and b"waitress-" in second


def test_blocking_endpoint_runs_in_a_worker_and_never_stalls_the_loop(served):
    port, _, _, slow = served
    with connect(port) as a, connect(port) as b:
        a.sendall(request("GET", "/slow"))
        time.sleep(0.1)
        b.sendall(request("GET", "/fast"))
        # Answered while /slow still holds its worker thread.
        assert read_for(b, 0.5).startswith(b"HTTP/1.1 200 OK")
        assert not slow.release.is_set()
        slow.release.set()
        reply = read_for(a, 0.5)
    assert b'"thread":"waitress-' in reply


def test_code_that_would_block_is_handed_to_a_worker_thread(served):
    """must_not_block on the loop: the request is run again, from the start, in a worker."""
    port, _, keys, _ = served
    with connect(port) as sock:
        sock.sendall(request("GET", "/keys"))
        reply = read_for(sock, 0.5)
    assert reply.startswith(b"HTTP/1.1 200 OK")
    assert b'"thread":"waitress-' in reply
    assert keys.calls == 2  # stopped on the loop, then served in the worker


def test_connection_close_after_a_held_answer_still_delivers_it(served):
    port, commit, *_ = served
    with connect(port) as sock:
        sock.sendall(request("POST", "/commit", close=True))
        assert commit.arrived.wait(5)
        time.sleep(0.2)  # the loop must not close the connection meanwhile
        commit.tickets[0]._finish()
        reply = read_for(sock, 1.0)
    assert reply.startswith(b"HTTP/1.1 200 OK") and b'"committed":"yes"' in reply


def test_commits_of_many_connections_are_answered_together(served):
    port, commit, *_ = served
    socks = [connect(port) for _ in range(5)]
    try:
        for sock in socks:
            sock.sendall(request("POST", "/commit"))
        poll_until(lambda: len(commit.tickets) == 5, "the five POSTs registered their "
                   "tickets", 5.0, 0.01)
        for ticket in commit.tickets:
            ticket._finish()
        for sock in socks:
            assert read_for(sock, 0.5).startswith(b"HTTP/1.1 200 OK")
    finally:
        for sock in socks:
            sock.close()


def test_the_orchestrator_serves_only_its_nonblocking_endpoints_on_the_loop(make_config):
    """Resource Manager endpoints and status on the loop; Slurm-facing ones in threads."""
    from wfm_orchestrator.cli import build_all

    app, nonblocking, rm, services, steps, store = build_all(make_config())
    try:
        for version in ("v1.0.0", "v2.0.0", "v2.1.0"):
            for path in ("/ephemeralservice/reserve", "/server/allocation/s1",
                         "/server/resources/dn1", "/server/resources/all", "/location/list",
                         "/ephemeralservice/flavors", "/ephemeralservice/status",
                         "/ephemeralservice/status/s1", "/ephemeralservice/status/s1/"):
                assert nonblocking("GET", f"/{version}{path}"), path
            for path in ("/ephemeralservice/release/s1", "/step/launch", "/step/status",
                         "/step/status/x", "/step/progress", "/step/abort/x",
                         "/server/allocation/s1/extra", "/ephemeralservice/statusx"):
                assert not nonblocking("GET", f"/{version}{path}"), path
        assert nonblocking("GET", "/openapi.json")
        assert not nonblocking("GET", "/v9.9.9/ephemeralservice/status")
    finally:
        store.close()


def test_sigterm_while_the_loop_sends_held_answers_still_stops_it():
    """SystemExit (the SIGTERM handler's) raised in loop work ends the loop.

    waitress runs trigger thunks under a bare ``except:``; the loop's work
    must not run as one, or a SIGTERM landing there would be swallowed.
    """
    app = falcon.App()
    server = create_server(app, "127.0.0.1", 0, threads=1)
    ended = threading.Event()

    def run():
        try:
            server.run()
        except SystemExit:
            pass
        finally:
            ended.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(0.2)

    def interrupted():
        raise SystemExit(0)

    server.mailbox.post(interrupted)
    try:
        assert ended.wait(5), "the loop swallowed SystemExit"
    finally:
        server.close()


def test_with_the_fast_path_off_stock_waitress_serves_the_api(make_config):
    """fast_path = off: waitress' own dispatcher, parser and task; same answers, same refusals."""
    from wfm_orchestrator.cli import build_all
    from wfm_orchestrator.http.channel import StockChannel

    app, nonblocking, rm, services, steps, store = build_all(make_config())
    server = create_server(app, "127.0.0.1", 0, threads=2, nonblocking=nonblocking,
                           fast_path=False, turn_end=(store.flush,))
    assert server.channel_class is StockChannel
    thread = threading.Thread(target=server.run, name="loop", daemon=True)
    thread.start()
    body = json.dumps({"name": "alice_s1_sbb", "user": "alice", "user_slurm_token": "tok",
                       "type": "SBB", "attributes": {"flavor": "small",
                                                      "targets": "/scratch/*.h5"}})
    try:
        with connect(server.effective_port) as sock:
            sock.sendall((f"POST /v1.0.0/ephemeralservice/reserve HTTP/1.1\r\nHost: x\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}"
                          f"\r\n\r\n{body}").encode())
            reply = read_for(sock, 1.0)
            assert reply.startswith(b"HTTP/1.1 200 OK"), reply
            assert b'"status":"FREE"' in reply
            # Answered only once committed: the row is there.
            assert store.query("SELECT state FROM reservation")[0]["state"] == "FREE"
            sock.sendall(request("GET", "/v1.0.0/location/list"))
            assert read_for(sock, 0.5).startswith(b"HTTP/1.1 200 OK")
        with connect(server.effective_port) as sock:
            sock.sendall(b"GET /v1.0.0/location/list HTTP/1.1\nHost: x\n\n")
            reply = read_for(sock, 1.0)
        assert b" 400 Bad Request\r\n" in reply and b"bare LF" in reply
        with connect(server.effective_port) as sock:
            sock.sendall(b"POST /v1.0.0/location/list HTTP/1.0\r\nTransfer-Encoding: chunked"
                         b"\r\n\r\n0\r\n\r\n" + request("GET", "/v1.0.0/location/list"))
            reply = read_for(sock, 1.0)
            assert sock.recv(1) == b""  # closed
        assert reply.startswith(b"HTTP/1.0 400 Bad Request\r\n"), reply
        assert b"Transfer-Encoding" in reply and len(STATUS_LINE.findall(reply)) == 1
    finally:
        stop_served(server, thread)
        store.close()


def test_worker_threads_give_the_cpu_to_the_loop_first():
    """Worker threads run at WORKER_NICE, the loop thread at the process's own priority:
    a worker rendering a whole list does not keep the loop's requests waiting for a CPU."""
    import os

    from wfm_orchestrator.http.dispatcher import WORKER_NICE

    class Nice:
        def on_get(self, req, resp):
            resp.media = {"nice": os.getpriority(os.PRIO_PROCESS, threading.get_native_id())}

    app = falcon.App()
    app.add_route("/loop", Nice())
    app.add_route("/worker", Nice())
    server = create_server(app, "127.0.0.1", 0, threads=1,
                           nonblocking=lambda method, path: path == "/loop")
    thread = threading.Thread(target=server.run, name="loop", daemon=True)
    thread.start()
    own = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        for path, nice in (("/loop", own), ("/worker", min(19, own + WORKER_NICE))):
            with connect(server.effective_port) as sock:
                sock.sendall(request("GET", path, close=True))
                reply = read_for(sock, 2.0)
            assert json.loads(reply.split(b"\r\n\r\n", 1)[1]) == {"nice": nice}, path
    finally:
        stop_served(server, thread)
