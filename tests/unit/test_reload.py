"""Reload without a restart (#19 item 3): records and the queue's settings change, a
datanode removed while used drains, a bad file is refused with file:line."""

from __future__ import annotations

from ..conftest import LARGE, SBB, reserve


def rewrite(rm, old: str, new: str) -> None:
    with open(rm.config.path) as fh:
        text = fh.read()
    assert old in text
    with open(rm.config.path, "w") as fh:
        fh.write(text.replace(old, new))


def reload(client, status=200):
    r = client.simulate_post("/admin/reload")
    assert r.status_code == status, r.text
    return r.json


def test_added_datanode_location_and_flavor_take_effect_and_admit_the_queue(app_factory):
    client, rm, _ = app_factory()
    for i in range(5):
        reserve(client, dict(LARGE, name=f"alice_s_l{i}"))
    assert rm.get("alice_s_l4").state.value == "QUEUED"
    rewrite(rm, "Datanode=dn[1-4] Cores=8",
            "Location=loc3 ComputeNodes=cn5 Datanodes=dn5\nDatanode=dn[1-5] Cores=8")
    rewrite(rm, "Flavor=small  MemorySize=5GB  Cores=2", "Flavor=small  MemorySize=6GB  Cores=2"
            "\nFlavor=tiny MemorySize=1GB Cores=1")
    answer = reload(client)
    assert "datanode dn5 added" in answer["changes"]
    assert "location loc3 added" in answer["changes"]
    assert {"flavor tiny added", "flavor small changed"} <= set(answer["changes"])
    assert answer["restart_needed"] == [] and answer["drained_until_released"] == []
    assert rm.get("alice_s_l4").state.value == "FREE"  # admitted on dn5
    assert rm.get("alice_s_l4").placement[0].server == "dn5"
    names = [f["name"] for f in client.simulate_get("/v1.0.0/ephemeralservice/flavors").json]
    assert names == ["small", "tiny", "medium", "large"]  # file order
    locs = client.simulate_get("/v1.0.0/location/list").json
    assert locs == [{"name": "loc1"}, {"name": "loc2"}, {"name": "loc3"}]
    assert client.simulate_get("/v1.0.0/server/resources/dn5").status_code == 200


def test_datanode_removed_while_used_drains_until_its_reservations_end(app_factory):
    client, rm, _ = app_factory()
    reserve(client, SBB)  # on dn1
    rewrite(rm, "Datanodes=dn[1-2]", "Datanodes=dn2")
    rewrite(rm, "Datanode=dn[1-4]", "Datanode=dn[2-4]")
    answer = reload(client)
    assert answer["drained_until_released"] == ["dn1"]
    res = client.simulate_get("/v1.0.0/server/resources/dn1").json
    assert res["state"] == "drained" and "removed from" in res["reason"]
    assert rm.get(SBB["name"]).state.value == "FREE"
    reserve(client, dict(SBB, name="alice_s_new"))
    assert rm.get("alice_s_new").placement[0].server != "dn1"
    r = client.simulate_post("/admin/datanodes/dn1/resume")
    assert r.status_code == 500 and "removed from" in r.json["description"]
    rm.release(SBB["name"])[1].wait()
    reload(client)  # nothing holds dn1 any more: it goes
    assert client.simulate_get("/v1.0.0/server/resources/dn1").status_code == 500
    assert [d["name"] for d in client.simulate_get("/admin/datanodes").json] == [
        "dn2", "dn3", "dn4"]


def test_bad_file_is_refused_with_file_and_line_and_the_running_one_kept(app_factory):
    client, rm, _ = app_factory()
    rewrite(rm, "Flavor=small  MemorySize=5GB  Cores=2", "Flavor=small  MemorySize=lots")
    r = reload(client, 400)
    assert f"{rm.config.path}:10:" in r["description"]
    assert "the running configuration is kept" in r["description"]
    assert rm.config.flavors["small"].cores == 2
    assert client.simulate_get("/v1.0.0/ephemeralservice/flavors").json[0]["cores"] == 2


def test_shrinking_a_used_datanode_is_refused_naming_the_reservation(app_factory):
    client, rm, _ = app_factory()
    reserve(client, LARGE)  # every core of dn1
    rewrite(rm, "Datanode=dn[1-4] Cores=8", "Datanode=dn[1-4] Cores=4")
    r = reload(client, 409)
    assert "alice_s_big" in r["description"] and "kept" in r["description"]
    assert len(rm.config.datanodes["dn1"].core_list) == 8
    reserve(client, dict(LARGE, name="alice_s_other"))
    assert rm.get("alice_s_other").state.value == "FREE"


def test_settings_a_restart_applies_are_kept_and_named(app_factory):
    client, rm, _ = app_factory()
    rewrite(rm, "queue_policy = fifo", "queue_policy = backfill\nthreads = 3")
    answer = reload(client)
    assert answer["restart_needed"] == ["threads"]
    assert "queue_policy = backfill (was fifo)" in answer["changes"]
    assert rm.config.queue_policy == "backfill"
    assert rm.config.threads != 3


def test_drains_survive_a_reload(app_factory):
    client, rm, _ = app_factory()
    client.simulate_post("/admin/datanodes/dn2/drain", json={"reason": "fan"})
    rewrite(rm, "Datanode=dn[1-4] Cores=8", "Datanode=dn[1-4] Cores=16")
    reload(client)
    assert rm.datanode_state("dn2") == ("drained", "fan")
    assert client.simulate_get("/v1.0.0/server/resources/dn2").json["free_cores"] == 16
    for i in range(3):
        reserve(client, dict(LARGE, name=f"alice_s_l{i}"))
        assert rm.get(f"alice_s_l{i}").placement[0].server != "dn2"


def test_sighup_reload_logs_a_refusal_and_keeps_running(app_factory, caplog):
    """What serve's SIGHUP handler runs (on a thread of its own): a bad file is logged
    with file:line, a good one applied."""
    from wfm_orchestrator.cli import _reload_on_signal

    _, rm, _ = app_factory()
    rewrite(rm, "Datanode=dn[1-4] Cores=8", "Datanode=dn[1-4] Cores=eight")
    _reload_on_signal(rm.config, rm)
    assert f"{rm.config.path}:8:" in caplog.text and "running configuration is kept" in caplog.text
    rewrite(rm, "Datanode=dn[1-4] Cores=eight", "Datanode=dn[1-4] Cores=4")
    _reload_on_signal(rm.config, rm)
    assert len(rm.config.datanodes["dn1"].core_list) == 4
