"""The operators' views: the Prometheus scraper's token and the dashboard (docs/security.md
§3, §13).

A token with the ``metrics`` role is tried against every kind of endpoint on an
orchestrator with ``auth = keycloak``; the dashboard is loaded in a real headless
Chromium from a real ``serve`` whose records carry markup where a user's words could
one day land.
"""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from tests.integration.dashboard_page import dump_dom
from wfm_orchestrator.repositories.reservations import stored_request, stored_request_of

from .conftest import BOB, request, roles, start_serve, stop_serve, unique

pytestmark = pytest.mark.integration

MARKUP = "<img src=x onerror=document.title='owned'><b>bold</b>"


def test_the_metrics_token_reads_only_metrics(kc_server):
    """The scraper's token: ``/metrics`` (which names no user or service), and nothing
    else that holds or changes users' things: 403 naming the role, bob's reservation
    unchanged."""
    port, tokens, key, name = kc_server
    scraper = tokens.make(key, preferred_username="prometheus", **roles("metrics"))
    admin = tokens.make(key, preferred_username="ops", **roles("admin"))
    code, headers, text = request(port, "GET", "/metrics", scraper)
    assert code == 200 and "wfm_reservations" in text, (code, text[:300])
    assert name not in text and BOB not in text
    before = request(port, "GET", f"/v1.0.0/ephemeralservice/status/{name}", admin)[2]
    for method, path in (("GET", "/ui/overview"),
                         ("GET", f"/v2.0.0/server/allocation/{name}?job_id=1&uid=1002"),
                         ("DELETE", f"/v2.0.0/server/allocation/{name}?job_id=1"),
                         ("DELETE", f"/v1.0.0/ephemeralservice/release/{name}"),
                         ("GET", "/v1.0.0/server/resources/all")):
        code, _, answer = request(port, method, path, scraper)
        assert code == 403 and "role" in answer["message"], (method, path, code, answer)
    code, _, listed = request(port, "GET", "/v1.0.0/ephemeralservice/status", scraper)
    assert code == 200 and listed == []  # lists are filtered: none of its own
    assert request(port, "GET", f"/v1.0.0/ephemeralservice/status/{name}", admin)[2] == before


def test_markup_in_a_record_is_drawn_as_text_on_the_dashboard(servers, tmp_path):
    """No request can put markup in a record today (names and users are validated), so the
    markup is planted where a user's words would land, in the stopped server's database
    (a live reservation's user); the restarted server's dashboard, loaded in Chromium,
    shows it as text and runs nothing."""
    server = servers()
    name = unique("ui")
    body = {"name": name, "user": BOB, "user_slurm_token": "t", "type": "GBF",
            "attributes": {"cores": 1, "msize": 10, "gssize": 0, "mountpoint": "/m"}}
    assert request(server.port, "POST", "/v1.0.0/ephemeralservice/reserve", None, body)[0] \
        == 200
    stop_serve(server)
    conn = sqlite3.connect(os.path.join(server.directory, "state", "state.db"))
    with conn:
        (stored,) = conn.execute("SELECT request FROM reservation WHERE name = ?",
                                 (name,)).fetchone()
        planted = json.dumps(stored_request(stored_request_of(name, None, stored)
                                            ._replace(user=MARKUP)))
        conn.execute('UPDATE reservation SET request = ?, "user" = ? WHERE name = ?',
                     (planted, MARKUP, name))
    conn.close()
    restarted = start_serve(server.directory, server.config, server.port)
    try:
        page = dump_dom(restarted.url("/ui"), tmp_path)
        shown = [row for row in page.rows("services") if row.get("data-name") == name]
        assert shown and MARKUP in shown[0]["cells"], page.rows("services")
        assert not page.find(tag="img") and not page.find(tag="b")
        assert page.one(tag="title")["text"] != "owned"
    finally:
        stop_serve(restarted)
