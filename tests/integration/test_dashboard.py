"""The dashboard (/ui) in a real headless Chromium, against a real orchestrator process.

Chromium (Debian's ``chromium``, installed by deploy/install) loads the page, runs its
script, which reads /ui/overview, and ``--dump-dom`` gives the document it drew. The
first test runs a real ``wfm-orchestrator serve`` (auth = none, no Slurm) with
reservations held and queued; the others serve the package's page and assets with a
canned overview (the ``canned`` fixture, conftest.py), for what the orchestrator cannot
make yet (down datanodes: Slurm's node states are not followed, issue #19 item 2) and for
the token prompt of auth = keycloak.
"""

from __future__ import annotations

import json
import os
import pwd
import urllib.request

import pytest

from .dashboard_page import chromium, dump_dom
from .raw_server import start_server, stop_server

# A real server process (or a loopback one of the test's own), no Slurm.
pytestmark = pytest.mark.server


def ordinary_users() -> list[str]:
    """Two accounts of this machine a reservation may name (uid >= 1000): the mini-cluster's
    alice and bob when they exist (deploy/devcluster up creates them)."""
    found = [p.pw_name for p in sorted(pwd.getpwall(), key=lambda p: p.pw_uid)
             if 1000 <= p.pw_uid < 65534]
    assert found, "no ordinary account (uid >= 1000): deploy/devcluster up creates alice"
    if {"alice", "bob"} <= set(found):
        return ["alice", "bob"]
    return (found * 2)[:2]


def reserve(port: int, name: str, user: str, servers: int, cores: int) -> str:
    body = {"name": name, "user": user, "user_slurm_token": "t", "type": "GBF",
            "servers": servers, "attributes": {"cores": cores, "msize": "3GB",
                                               "gssize": "300GB", "mountpoint": "/m"}}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1.0.0/ephemeralservice/reserve",
        data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - loopback
        return json.load(answer)["status"]


def test_dashboard_shows_datanodes_the_queue_and_services(tmp_path):
    """A real server with reservations held and queued: the grid has every datanode (up,
    its use in each dimension), the queue lists the waiting ones in order, the services
    table the live ones, the summary the counts."""
    server = start_server(tmp_path)
    try:
        alice, bob = ordinary_users()
        assert reserve(server.port, "s_full", alice, 1, 8) == "FREE"  # one datanode's cores
        assert reserve(server.port, "s_half", alice, 2, 4) == "FREE"
        assert reserve(server.port, "s_wide", bob, 4, 8) == "QUEUED"  # needs four empty ones
        assert reserve(server.port, "s_next", bob, 1, 1) == "QUEUED"  # fifo: behind it
        page = dump_dom(f"http://127.0.0.1:{server.port}/ui", tmp_path)
    finally:
        stop_server(server)
    assert page.one(tag="body")["data-loaded"] == "yes", "the page never drew an overview"
    nodes = page.find(tag="div", **{"class": "node state-up"})
    assert sorted(n["data-datanode"] for n in nodes) == ["dn1", "dn2", "dn3", "dn4"]
    cores = sorted(float(b["data-use"]) for b in page.find(tag="div", **{"data-dimension":
                                                                         "cores"}))
    assert cores == [0.0, 0.5, 0.5, 1.0]  # 8 of 8 on one, 4 of 8 on two, one empty
    assert all(n["text"].count("up") for n in nodes)
    queue = page.rows("queue")
    assert [(r["data-name"], r["cells"][0], r["cells"][2]) for r in queue] == \
        [("s_wide", "1", bob), ("s_next", "2", bob)]
    services = {r["data-name"]: r["cells"] for r in page.rows("services")}
    assert set(services) == {"s_full", "s_half", "s_wide", "s_next"}
    assert services["s_wide"][2] == "STAGINGIN"
    assert "queued at position 1" in services["s_wide"][3]
    assert "resources reserved (FREE) on" in services["s_full"][3]
    summary = page.one(id="summary")["text"]
    assert "4 datanodes" in summary and "queue 2" in summary and "free 2" in summary
    assert page.one(id="steps-count")["text"] == "0 known"
    assert page.one(id="login").get("hidden") is not None  # auth = none: no token asked


def test_drained_and_down_datanodes_are_marked(canned, tmp_path):
    """Drained and down datanodes are drawn as such with their reason; a Slurm problem is
    shown; names and details are shown as text, never run as HTML."""
    _, url = canned
    page = dump_dom(url, tmp_path)
    states = {n["data-datanode"]: (n["class"], n["text"]) for n in page.find(tag="div")
              if "data-datanode" in n}
    assert states["dn1"][0] == "node state-up"
    assert states["dn2"][0] == "node state-drained" and "disk swap" in states["dn2"][1]
    assert states["dn3"][0] == "node state-down" and "not responding" in states["dn3"][1]
    assert page.one(id="problem")["text"] == "Slurm unreachable: slurmrestd did not answer"
    service = page.rows("services")[0]
    assert service["cells"][0] == "<img src=x onerror=alert(1)>"  # text, not an element
    assert not page.find(tag="img") and not page.find(tag="b")
    assert [r["data-name"] for r in page.rows("steps")] == ["alice_st_1"]


def test_with_a_token_required_the_page_asks_for_one(canned, tmp_path):
    """auth = keycloak: answered 401, the page shows the token form and the reason."""
    handler, url = canned
    handler.token_needed = True
    page = dump_dom(url, tmp_path)
    assert page.one(id="login").get("hidden") is None
    assert "authentication required" in page.one(id="login-why")["text"]
    assert page.one(tag="body").get("data-loaded") is None


def test_screenshot_of_the_dashboard(tmp_path):
    """The README's picture is what this Chromium draws (docs/dashboard.png, regenerated
    with WFM_SCREENSHOT=path)."""
    target = os.environ.get("WFM_SCREENSHOT")
    server = start_server(tmp_path)
    try:
        alice, bob = ordinary_users()
        for name, user, servers, cores in (("alice_s1_nfs", alice, 1, 8),
                                           ("alice_s1_sbb", alice, 2, 4),
                                           ("bob_s2_gbf", bob, 1, 2),
                                           ("bob_s3_sbb", bob, 4, 8),
                                           ("alice_s4_dasi", alice, 1, 1)):
            reserve(server.port, name, user, servers, cores)
        shot = target or str(tmp_path / "dashboard.png")
        chromium("--window-size=1280,760", f"--screenshot={shot}",
                 f"http://127.0.0.1:{server.port}/ui", profile=str(tmp_path / "chromium"))
    finally:
        stop_server(server)
    with open(shot, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
