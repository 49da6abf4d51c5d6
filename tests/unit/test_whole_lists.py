"""The spec's unpaged lists: one snapshot, rendered off the event loop and streamed.

The body of a streamed list must be the bytes the unstreamed list had (one ``ujson.dumps``),
and a change made while it streams must be seen wholly or not at all.
"""

from __future__ import annotations

import gc
import json
import socket
import threading

import ujson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wfm_orchestrator.api.paging import json_list

from ..conftest import reserve
from .conftest import stop_served

STATUS = "/v1.0.0/ephemeralservice/status"


def large(name: str, user: str = "alice") -> dict:
    """A service that takes a whole datanode of SMALL_CONF (4 fit, the rest queue)."""
    return {"name": name, "user": user, "user_slurm_token": "t", "type": "SBB",
            "attributes": {"flavor": "large", "targets": ["/a/*"]}}


# --- the bytes ----------------------------------------------------------------------

ITEM = st.dictionaries(st.sampled_from(["name", "detail", "user", "id", "servers"]),
                       st.one_of(st.text(max_size=8), st.integers(-2**53, 2**53),
                                 st.lists(st.text(max_size=3), max_size=2)), max_size=3)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(ITEM, max_size=3), max_size=4))
def test_a_streamed_list_is_the_bytes_of_one_dumps(chunks):
    """Any split into chunks, empty ones included (items a filter left out), unicode and
    slashes (which ujson escapes): the same bytes as the list dumped at once."""
    chunks.append([{"detail": "é/\u2028\"x"}])
    items = [item for chunk in chunks for item in chunk]
    assert b"".join(json_list(chunks)) == ujson.dumps(items).encode()


def test_unpaged_lists_stream_the_bytes_of_the_whole_list(app_factory):
    """status, status/{user}, admin/reservations, server/resources/all, admin/datanodes: no
    Content-Length (streamed), the same bytes as the list rendered at once."""
    client, rm, _ = app_factory()
    for i in range(7):
        reserve(client, large(f"alice_s_{i}", user="alice" if i % 2 else "bob"))
    services = client.services
    cases = {
        STATUS: services.status_page(None, None).items,
        f"{STATUS}/alice": services.status_page(None, None, users=("alice",)).items,
        "/admin/reservations": rm.page(None, None, render=_admin_item).items,
        "/v1.0.0/server/resources/all": rm.all_resources(),
        "/admin/datanodes": [_datanode_item(v) for v in rm.datanodes()],
    }
    for path, expected in cases.items():
        r = client.simulate_get(path)
        assert r.status_code == 200, r.text
        assert "content-length" not in r.headers, path
        assert r.content == ujson.dumps(expected).encode(), path
        assert r.json, path
    assert [s["name"] for s in client.simulate_get(f"{STATUS}/alice").json] == \
        ["alice_s_1", "alice_s_3", "alice_s_5"]


def _datanode_item(view):
    from wfm_orchestrator.api.admin import datanode_item
    return datanode_item(view)


def _admin_item(rec, position):
    from wfm_orchestrator.api.admin import reservation_item
    return reservation_item(rec, position)


# --- one snapshot -------------------------------------------------------------------


def test_a_change_made_while_the_list_streams_is_not_seen(app_factory):
    """The list is the one of the moment it was asked for: a binding, a release that
    admits the queue's head (which moves every queued position), a renewed token, a
    new reservation, all made after its first chunk, are absent from every item."""
    client, rm, _ = app_factory()
    for i in range(7):
        reserve(client, large(f"alice_s_{i}"))  # 0-3 hold a datanode each, 4-6 queue
    services = client.services
    before = services.status_page(None, None).items
    assert [s["detail"].split(":")[0] for s in before[4:]] == \
        [f"queued at position {n}" for n in (1, 2, 3)]

    chunks = services.status_chunks(size=2)
    seen = next(chunks)
    assert client.simulate_get("/v2.0.0/server/allocation/alice_s_3").status_code == 200
    assert client.simulate_delete("/v2.0.0/server/allocation/alice_s_0").status_code == 200
    reserve(client, {**large("alice_s_5"), "user_slurm_token": "renewed"})
    reserve(client, large("alice_s_new"))
    seen += [item for chunk in chunks for item in chunk]

    assert seen == before
    after = services.status_page(None, None).items
    assert after != before and after[0]["status"] == "STOPPED"
    assert "queued" not in after[4]["detail"] and after[5]["detail"].startswith(
        "queued at position 1")
    gc.collect()
    assert not rm._listings, "a finished listing is still kept up to date"


def test_a_listing_never_read_is_dropped_with_its_stream(app_factory):
    """A client that goes away before the first chunk: nothing keeps copying for it."""
    client, rm, _ = app_factory()
    reserve(client, large("alice_s_0"))
    chunks = client.services.status_chunks()
    assert len(rm._listings) == 1
    del chunks
    gc.collect()
    assert not rm._listings


def test_the_whole_list_of_a_uid_reads_only_that_users_reservations(app_factory,
                                                                     account_table):
    """The per-user index: a user's list is that user's records, in arrival order."""
    client, rm, _ = app_factory()
    for i in range(6):
        reserve(client, large(f"{'alice' if i % 3 else 'bob'}_s_{i}",
                              user="alice" if i % 3 else "bob"))
    client.simulate_delete("/v2.0.0/server/allocation/alice_s_1")
    reserve(client, large("alice_s_1"))  # again: at the end of alice's list, once
    assert [r.name for r in rm._ordered(("alice",))] == \
        ["alice_s_2", "alice_s_4", "alice_s_5", "alice_s_1"]
    assert [r.name for r in rm._ordered(("alice", "bob"))] == [r.name for r in rm._order]
    assert rm.users() == {"alice", "bob"}


# --- served by a worker, streamed -----------------------------------------------------


def test_the_loop_hands_an_unpaged_list_to_a_worker_which_streams_it(make_config):
    """On a real server: a paged list is answered on the loop with a Content-Length; the
    whole list goes to a worker and comes chunked, with the same items."""
    from wfm_orchestrator.cli import build_all
    from wfm_orchestrator.http.server import create_server

    app, nonblocking, rm, services, steps, store = build_all(make_config())
    server = create_server(app, "127.0.0.1", 0, threads=2, nonblocking=nonblocking,
                           turn_end=(store.flush,))
    thread = threading.Thread(target=server.run, name="loop", daemon=True)
    thread.start()
    try:
        for i in range(6):
            body = json.dumps(large(f"alice_s_{i}"))
            head, _ = _exchange(server.effective_port,
                                f"POST /v1.0.0/ephemeralservice/reserve HTTP/1.1\r\nHost: x\r\n"
                                f"Content-Type: application/json\r\nContent-Length: "
                                f"{len(body)}\r\n\r\n{body}")
            assert head.startswith(b"HTTP/1.1 200"), head
        head, paged = _exchange(server.effective_port,
                                f"GET {STATUS}?limit=100 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"Content-Length:" in head and b"chunked" not in head
        head, whole = _exchange(server.effective_port,
                                f"GET {STATUS} HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"Transfer-Encoding: chunked" in head and b"Content-Length" not in head
        assert whole == paged and len(json.loads(whole)) == 6
    finally:
        stop_served(server, thread)
        store.close()


def _exchange(port: int, request: str) -> tuple[bytes, bytes]:
    """Send ``request``; (the answer's head, its body, de-chunked)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request.encode())
        data = b""
        while b"\r\n\r\n" not in data or not _complete(data):
            more = sock.recv(65536)  # the socket's timeout (5 s) bounds each wait
            assert more, f"closed before the answer was complete: {data[:300]!r}"
            data += more
    head, body = data.split(b"\r\n\r\n", 1)
    if b"Transfer-Encoding: chunked" in head:
        out = b""
        while True:
            size, body = body.split(b"\r\n", 1)
            if not int(size, 16):
                return head, out
            out, body = out + body[:int(size, 16)], body[int(size, 16) + 2:]
    return head, body


def _complete(data: bytes) -> bool:
    head, body = data.split(b"\r\n\r\n", 1)
    if b"Transfer-Encoding: chunked" in head:
        return body.endswith(b"0\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return len(body) >= length


def test_step_lists_stream_every_step_across_chunks(make_config, monkeypatch):
    """The step lists are walked page by page (api/paging.py walk): with chunks of 3, the
    streamed body is still the bytes of the whole list, a user's list only theirs."""
    from wfm_orchestrator.api import paging

    from .test_steps_api import launch_for_two_users
    from .test_steps_api import make_client as make_step_client

    monkeypatch.setattr(paging, "CHUNK", 3)
    client, steps, store = make_step_client(make_config)
    try:
        launch_for_two_users(client)
        for path, expected in (("/v1.0.0/step/status", steps.statuses()),
                               ("/v1.0.0/step/status/bob", steps.statuses("bob"))):
            r = client.simulate_get(path)
            assert "content-length" not in r.headers
            assert r.content == ujson.dumps(expected).encode()
        assert len(client.simulate_get("/v1.0.0/step/status").json) == 10
        assert [s["name"] for s in client.simulate_get("/v1.0.0/step/status/bob").json] == \
            [f"bob_s1_step_{i}" for i in range(5)]
    finally:
        store.close()
