"""Drain and resume a datanode: no new placement there, existing reservations stay,
persisted, shown in server/resources and /admin/datanodes (#19 item 2)."""

from __future__ import annotations

from ..conftest import LARGE, SBB, reserve
from .test_metrics import scrape, value


def placed_on(client, name):
    return client.simulate_get(f"/admin/reservations/{name}").json["datanodes"]


def drain(client, node, reason="disk replacement"):
    return client.simulate_post(f"/admin/datanodes/{node}/drain", json={"reason": reason})


def test_drained_datanode_gets_no_new_placement_and_keeps_its_reservations(app_factory):
    """A reservation on dn1 stays when dn1 drains; new ones go elsewhere."""
    client, rm, _ = app_factory()
    reserve(client, SBB)
    assert placed_on(client, SBB["name"]) == ["dn1"]
    r = drain(client, "dn1")
    assert r.status_code == 200, r.text
    assert (r.json["state"], r.json["reason"]) == ("drained", "disk replacement")
    assert rm.get(SBB["name"]).state.value == "FREE"
    for i in range(3):
        reserve(client, dict(SBB, name=f"alice_s_{i}"))
        assert placed_on(client, f"alice_s_{i}") != ["dn1"]


def test_drained_datanode_shows_its_free_resources_state_and_reason(app_factory):
    """server/resources keeps the spec's fields (free stays free) and adds state, reason."""
    client, _, _ = app_factory()
    reserve(client, SBB)  # small: 2 cores, 5 GB on dn1
    drain(client, "dn1", "fan")
    res = client.simulate_get("/v1.0.0/server/resources/dn1").json
    assert (res["free_cores"], res["cores"], res["state"], res["reason"]) == (6, 8, "drained",
                                                                              "fan")
    assert res["free_core_list"] == [2, 3, 4, 5, 6, 7]
    assert client.simulate_get("/v1.0.0/server/resources/dn2").json["state"] == "up"
    [dn1] = [d for d in client.simulate_get("/admin/datanodes").json if d["name"] == "dn1"]
    assert (dn1["free_cores"], dn1["state"]) == (6, "drained")


def test_release_on_a_drained_datanode_frees_it_without_placing_there(app_factory):
    """What a release frees on a drained node is shown free, and still not placed on."""
    client, rm, _ = app_factory()
    reserve(client, SBB)
    drain(client, "dn1")
    rm.release(SBB["name"])[1].wait()
    res = client.simulate_get("/v1.0.0/server/resources/dn1").json
    assert (res["free_cores"], res["free_msize"]) == (8, 16384)
    for i in range(4):
        reserve(client, dict(LARGE, name=f"alice_s_l{i}"))
    states = {i: rm.get(f"alice_s_l{i}").state.value for i in range(4)}
    assert states == {0: "FREE", 1: "FREE", 2: "FREE", 3: "QUEUED"}


def test_resume_admits_the_queue(app_factory):
    """With dn1 drained a fourth whole-node reservation queues; resume places it on dn1."""
    client, rm, _ = app_factory()
    drain(client, "dn1")
    for i in range(4):
        reserve(client, dict(LARGE, name=f"alice_s_l{i}"))
    assert rm.get("alice_s_l3").state.value == "QUEUED"
    r = client.simulate_post("/admin/datanodes/dn1/resume")
    assert r.status_code == 200 and r.json["state"] == "up" and r.json["reason"] == ""
    assert rm.get("alice_s_l3").state.value == "FREE"
    assert placed_on(client, "alice_s_l3") == ["dn1"]


def test_drain_survives_a_restart(app_factory):
    """The drain is persisted (schema migration 8) and fences the node again at start."""
    client, _, store = app_factory()
    reserve(client, SBB)
    drain(client, "dn1", "maintenance until Monday")
    store.close()
    client, rm, _ = app_factory()
    assert rm.datanode_state("dn1") == ("drained", "maintenance until Monday")
    assert client.simulate_get("/v1.0.0/server/resources/dn1").json["free_cores"] == 6
    reserve(client, dict(SBB, name="alice_s_after"))
    assert placed_on(client, "alice_s_after") != ["dn1"]
    client.simulate_post("/admin/datanodes/dn1/resume")
    rm.store.close()
    _, rm, _ = app_factory()
    assert rm.datanode_state("dn1") == ("up", "")


def test_drain_again_replaces_the_reason_and_resume_is_idempotent(app_factory):
    client, _, _ = app_factory()
    drain(client, "dn2", "one")
    assert drain(client, "dn2", "two").json["reason"] == "two"
    for _ in range(2):
        assert client.simulate_post("/admin/datanodes/dn2/resume").json["state"] == "up"


def test_drain_refuses_an_unknown_datanode_and_an_empty_reason(app_factory):
    """404 names the datanode; 400 names the reason field."""
    client, _, _ = app_factory()
    r = drain(client, "dn9")
    assert r.status_code == 404 and "dn9" in r.json["description"]
    assert client.simulate_post("/admin/datanodes/dn9/resume").status_code == 404
    for body in ({}, {"reason": " "}, {"reason": 3}):
        r = client.simulate_post("/admin/datanodes/dn1/drain", json=body)
        assert r.status_code == 400 and "reason" in r.text, body


def test_admin_reservations_filter_by_user_and_state(app_factory):
    client, rm, _ = app_factory()
    reserve(client, SBB)
    reserve(client, dict(SBB, name="bob_s_x", user="bob"))
    rm.release("bob_s_x")[1].wait()
    names = [r["name"] for r in client.simulate_get("/admin/reservations").json]
    assert names == ["alice_s_sbb"]
    assert [r["name"] for r in client.simulate_get(
        "/admin/reservations", params={"state": "RELEASED"}).json] == ["bob_s_x"]
    assert client.simulate_get("/admin/reservations", params={"user": "bob"}).json == []
    r = client.simulate_get("/admin/reservations", params={"state": "LOST"})
    assert r.status_code == 400 and "QUEUED" in r.json["description"]
    assert client.simulate_get("/admin/reservations/nobody_x").status_code == 404


def test_metrics_and_overview_show_the_drained_datanode(app_factory):
    """wfm_datanode_state and the dashboard's data read the same state."""
    client, _, _ = app_factory()
    drain(client, "dn3", "cabling")
    m = scrape(client)
    assert value(m, "wfm_datanode_state", datanode="dn3", state="drained") == 1
    assert value(m, "wfm_datanode_state", datanode="dn3", state="up") == 0
    assert value(m, "wfm_datanode_free", datanode="dn3", dimension="cores") == 8
    [dn3] = [d for d in client.simulate_get("/ui/overview").json["datanodes"]
             if d["name"] == "dn3"]
    assert (dn3["state"], dn3["reason"]) == ("drained", "cabling")


def test_overview_counts_the_live_services_and_shows_the_newest(app_factory, monkeypatch):
    """The dashboard counts every service not stopped and renders only the newest MAX_ROWS
    of them (the others' statuses are not built), oldest first, as the status list has
    them."""
    from wfm_orchestrator.api import dashboard

    monkeypatch.setattr(dashboard, "MAX_ROWS", 2)
    client, rm, _ = app_factory()
    for i in range(4):
        reserve(client, dict(SBB, name=f"alice_s_{i}"))
    rm.release("alice_s_3")[1].wait()
    statuses = client.simulate_get("/v1.0.0/ephemeralservice/status").json
    live = [s for s in statuses if s["status"] != "STOPPED"]
    assert [s["name"] for s in live] == ["alice_s_0", "alice_s_1", "alice_s_2"]
    shown = client.simulate_get("/ui/overview").json["services"]
    assert shown == {"count": 3, "items": live[-2:]}


def test_a_datanode_answer_is_kept_until_its_resources_or_state_change(app_factory):
    """server/resources keeps each datanode's answer (_resources_of) while its free
    resources and state stay the same, and makes it again when either changes."""
    client, rm, _ = app_factory()
    first = rm.resources("dn1")
    assert rm.resources("dn1") is first  # kept
    reserve(client, dict(SBB, name="alice_s_keep"))
    [p] = rm.get("alice_s_keep").placement
    after = rm.resources(p.server)
    assert after["free_cores"] == rm.resources(p.server)["cores"] - len(p.core_list)
    assert rm.resources(p.server) is after
    drain(client, p.server, "cabling")
    drained = rm.resources(p.server)
    assert (drained["state"], drained["reason"]) == ("drained", "cabling")
    rm.release("alice_s_keep")[1].wait()
    assert rm.resources(p.server)["free_cores"] == drained["cores"]
    page = client.simulate_get("/v1.0.0/server/resources/all?limit=100").json
    assert {i["server_name"]: i["server_resources"] for i in page}[p.server] == \
        rm.resources(p.server)
