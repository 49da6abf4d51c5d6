"""The Resource Manager REST API, in process, on a real SQLite store."""

import pytest

from tests.poll import poll_until

SBB = {"name": "alice_s1_sbb", "user": "alice", "user_slurm_token": "tok", "type": "SBB",
       "attributes": {"flavor": "small", "targets": "/scratch/*.h5"}}


def body(**over):
    b = {k: (dict(v) if isinstance(v, dict) else v) for k, v in SBB.items()}
    attrs = over.pop("attributes", None)
    if attrs is not None:
        b["attributes"] = attrs
    b.update(over)
    return b


def raw(cores=1, msize=0, ssize=0, name="r", servers=1, user="alice", **extra):
    """A GBF request with explicit per-server demand (gssize = ssize x servers)."""
    return {"name": name, "user": user, "user_slurm_token": "tok", "type": "GBF",
            "servers": servers,
            "attributes": {"cores": cores, "msize": msize, "gssize": ssize * servers,
                           "mountpoint": "/mnt/x"}, **extra}


def free(client, server):
    r = client.simulate_get(f"/v1.0.0/server/resources/{server}")
    assert r.status_code == 200, r.text
    return r.json


def total_free(client):
    return [(e["server_name"], e["server_resources"]["free_cores"],
             e["server_resources"]["free_msize"], e["server_resources"]["free_ssize"])
            for e in client.simulate_get("/v1.0.0/server/resources/all").json]


def test_walkthrough_reserve_allocate_release(client):
    """reserve -> FREE; GET allocation -> ALLOCATED (then 501); DELETE -> 200 (then 502)."""
    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=SBB)
    assert r.status_code == 200, r.text
    assert r.json["status"] == "FREE"
    st = client.simulate_get("/v1.0.0/ephemeralservice/status/alice_s1_sbb").json
    assert st["status"] == "STAGINGIN" and "FREE" in st["detail"]
    assert st["time"].endswith("Z")

    r = client.simulate_get("/v2.0.0/server/allocation/alice_s1_sbb")
    assert r.status_code == 200
    assert r.json == {"name": "alice_s1_sbb", "servers": 1, "properties": [
        {"server_name": "dn1", "cores": 2, "core_list": [0, 1], "msize": 5120, "ssize": 0}]}
    assert free(client, "dn1")["free_core_list"] == [2, 3, 4, 5, 6, 7]
    assert client.simulate_get("/v1.0.0/ephemeralservice/status/alice_s1_sbb").json[
        "status"] == "ALLOCATED"
    assert client.simulate_get("/v2.0.0/server/allocation/alice_s1_sbb").status_code == 501

    r = client.simulate_delete("/v2.0.0/server/allocation/alice_s1_sbb")
    assert r.status_code == 200
    assert free(client, "dn1")["free_cores"] == 8
    assert client.simulate_delete("/v2.0.0/server/allocation/alice_s1_sbb").status_code == 502
    assert client.simulate_get("/v2.0.0/server/allocation/alice_s1_sbb").status_code == 500
    st = client.simulate_get("/v1.0.0/ephemeralservice/status/alice_s1_sbb").json
    assert st["status"] == "STOPPED"


def test_missing_allocation_is_500_and_delete_of_unknown_is_502(client):
    """Spec codes: GET allocation of a missing reservation 500, DELETE 502."""
    r = client.simulate_get("/v2.0.0/server/allocation/nobody_s_x")
    assert r.status_code == 500 and "nobody_s_x" in r.json["message"]
    assert client.simulate_delete("/v2.0.0/server/allocation/nobody_s_x").status_code == 502


def test_repeated_identical_reserve_is_idempotent(client):
    """The same body twice: 200 both times, one reservation."""
    for _ in range(3):
        assert client.simulate_post("/v1.0.0/ephemeralservice/reserve",
                                    json=SBB).status_code == 200
    assert free(client, "dn1")["free_cores"] == 6
    assert len(client.simulate_get("/v1.0.0/ephemeralservice/status").json) == 1


def test_same_name_with_a_different_body_fails(client):
    """A name reused with another request fails with the reason, nothing changes."""
    client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=SBB)
    other = body(attributes={"flavor": "medium", "targets": "/scratch/*.h5"})
    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=other)
    assert r.status_code == 500
    assert "different request" in r.json["message"]
    assert free(client, "dn1")["free_cores"] == 6


def test_reservation_that_can_never_fit_fails_at_once(client):
    """More than any candidate datanode has: 500 with the reason, not queued."""
    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=raw(cores=9))
    assert r.status_code == 500
    assert "can never fit" in r.json["message"] and "8 cores" in r.json["message"]
    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=raw(servers=5))
    assert r.status_code == 500 and "never fit" in r.json["message"]
    assert client.simulate_get("/v1.0.0/ephemeralservice/status").json == []


def test_gssize_is_split_evenly_rounded_up(client):
    """gssize 1001 MB over 2 servers gives 501 MB on each of two distinct datanodes."""
    b = {"name": "bob_s_gbf", "user": "bob", "user_slurm_token": "t", "type": "GBF",
         "servers": 2, "attributes": {"gssize": 1001, "mountpoint": "/gbf"}}
    assert client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=b).status_code == 200
    alloc = client.simulate_get("/v2.0.0/server/allocation/bob_s_gbf").json
    assert [p["ssize"] for p in alloc["properties"]] == [501, 501]
    assert len({p["server_name"] for p in alloc["properties"]}) == 2
    assert all(p["cores"] == 1 for p in alloc["properties"])  # cores default 1


def test_cores_zero_gives_an_empty_core_list(client):
    """cores: 0 means no binding."""
    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=raw(cores=0, ssize=10))
    assert r.status_code == 200
    alloc = client.simulate_get("/v2.0.0/server/allocation/r").json
    assert alloc["properties"][0]["core_list"] == [] and alloc["properties"][0]["cores"] == 0


def test_location_restricts_then_spills_to_neighbours(client):
    """location loc2 places on dn3/dn4 first, then on the neighbour loc1."""
    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve",
                             json=raw(name="a", cores=8, servers=3, location=["loc2"]))
    assert r.status_code == 200
    servers = [p["server_name"] for p in
               client.simulate_get("/v2.0.0/server/allocation/a").json["properties"]]
    assert sorted(servers[:2]) == ["dn3", "dn4"] and servers[2] in ("dn1", "dn2")


def test_queue_fifo_position_409_and_admission(client):
    """No room: 200 QUEUED with a position; GET 409; a release admits in order."""
    for i in range(4):
        r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=raw(name=f"big{i}",
                                                                              cores=8))
        assert r.json["status"] == "FREE"
    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=raw(name="q1", cores=8))
    assert r.status_code == 200 and r.json["status"] == "QUEUED"
    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=raw(name="q2", cores=1))
    assert r.json["status"] == "QUEUED"  # fifo: does not pass q1 even though... nothing fits
    st = client.simulate_get("/v1.0.0/ephemeralservice/status/q2").json
    assert st["status"] == "STAGINGIN" and "queued at position 2" in st["detail"]
    r = client.simulate_get("/v2.0.0/server/allocation/q1")
    assert r.status_code == 409 and "position 1" in r.json["message"]

    assert client.simulate_delete("/v2.0.0/server/allocation/big0").status_code == 200
    assert client.simulate_get("/v1.0.0/ephemeralservice/status/q1").json["status"] == \
        "STAGINGIN"
    assert client.simulate_get("/v2.0.0/server/allocation/q1").status_code == 200
    assert "position 1" in client.simulate_get("/v1.0.0/ephemeralservice/status/q2").json[
        "detail"]
    # DELETE removes a queued reservation
    assert client.simulate_delete("/v2.0.0/server/allocation/q2").status_code == 200
    st = client.simulate_get("/v1.0.0/ephemeralservice/status/q2").json
    assert st["status"] == "STOPPED" and "removed from the queue" in st["detail"]


def test_fifo_head_blocks_smaller_later_requests(client):
    """fifo: a small request behind a big queued one waits, even if it would fit."""
    for i in range(4):
        client.simulate_post("/v1.0.0/ephemeralservice/reserve",
                             json=raw(name=f"h{i}", cores=6))
    client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=raw(name="big", cores=8))
    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=raw(name="small", cores=1))
    assert r.json["status"] == "QUEUED"
    client.simulate_delete("/v2.0.0/server/allocation/h0")
    # big is admitted first (dn freed), small follows on the remaining space
    assert client.simulate_get("/v2.0.0/server/allocation/big").status_code == 200
    assert client.simulate_get("/v2.0.0/server/allocation/small").status_code == 200


def test_backfill_lets_a_fitting_request_pass_a_young_head(app_factory):
    """backfill: a later request that fits passes the head while it waited < window."""
    client, _, _ = app_factory(queue_policy="backfill")
    for i in range(4):
        client.simulate_post("/v1.0.0/ephemeralservice/reserve",
                             json=raw(name=f"h{i}", cores=6))
    client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=raw(name="big", cores=8))
    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=raw(name="small", cores=1))
    assert r.json["status"] == "FREE"


def test_state_survives_a_restart(app_factory, tmp_path):
    """Reservations, states and the queue are rebuilt from the database at start."""
    client, rm, store = app_factory()
    for i in range(4):
        client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=raw(name=f"b{i}", cores=8))
    client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=raw(name="q", cores=8))
    client.simulate_get("/v2.0.0/server/allocation/b1")
    before = total_free(client)
    statuses = client.simulate_get("/v1.0.0/ephemeralservice/status").json
    store.close()

    client2, _, _ = app_factory()
    assert total_free(client2) == before
    assert client2.simulate_get("/v1.0.0/ephemeralservice/status").json == statuses
    assert client2.simulate_get("/v2.0.0/server/allocation/b1").status_code == 501
    assert client2.simulate_get("/v2.0.0/server/allocation/q").status_code == 409
    client2.simulate_delete("/v2.0.0/server/allocation/b0")
    assert client2.simulate_get("/v2.0.0/server/allocation/q").status_code == 200


def test_locations_and_flavors(client):
    """location/list and flavors list the configuration (flavors in MB, ssize always there)."""
    assert client.simulate_get("/v1.0.0/location/list").json == [{"name": "loc1"},
                                                                 {"name": "loc2"}]
    flavors = client.simulate_get("/v1.0.0/ephemeralservice/flavors").json
    assert flavors[0] == {"name": "small", "cores": 2, "msize": 5120, "ssize": 0}
    assert flavors[1]["ssize"] == 512000


def test_status_by_user_lists_only_that_users_services(client):
    """status/{user_id}: a name is looked up first, then a user id."""
    client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=SBB)
    client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=raw(name="bob_x", user="bob"))
    mine = client.simulate_get("/v1.0.0/ephemeralservice/status/alice").json
    assert [s["name"] for s in mine] == ["alice_s1_sbb"]
    assert client.simulate_get("/v1.0.0/ephemeralservice/status/carol").json == []
    assert len(client.simulate_get("/v1.0.0/ephemeralservice/status").json) == 2


def test_resources_of_an_unknown_server_fail(client):
    """server/resources of an unknown datanode: the spec's 500, naming valid ones."""
    r = client.simulate_get("/v1.0.0/server/resources/dn99")
    assert r.status_code == 500 and "dn1" in r.json["message"]


def test_unknown_route_is_404_json(client):
    """Unknown routes get 404 with a JSON error body."""
    r = client.simulate_get("/v1.0.0/nothing/here")
    assert r.status_code == 404 and "message" in r.json


INVALID = [
    ({"attributes": {"flavor": "small", "cores": 2, "targets": "x"}}, "attributes.cores"),
    ({"attributes": {"flavor": "small", "gssize": 2, "targets": "x"}}, "attributes.gssize"),
    ({"attributes": {"flavor": "nope", "targets": "x"}}, "attributes.flavor"),
    ({"attributes": {"targets": "x"}}, "attributes.flavor"),
    ({"attributes": {"flavor": "small"}}, "attributes.targets"),
    ({"type": "NFS", "attributes": {"gssize": 10}}, "attributes.mountpoint"),
    ({"type": "GBF", "attributes": {"mountpoint": "/m"}}, "attributes.gssize"),
    ({"type": "GBF", "attributes": {"ssize": 1, "gssize": 2, "mountpoint": "/m"}},
     "attributes.ssize"),
    ({"type": "XFS"}, "type"),
    ({"location": ["mars"]}, "location[0]"),
    ({"location": "loc1"}, "location"),
    ({"servers": 0}, "servers"),
    ({"servers": "2"}, "servers"),
    ({"servers": True}, "servers"),
    ({"servers": 2**63}, "servers"),
    ({"colour": "red"}, "colour"),
    ({"attributes": {"flavor": "small", "targets": "x", "size": 1}}, "attributes.size"),
    ({"type": "GBF", "attributes": {"gssize": -1, "mountpoint": "/m"}}, "attributes.gssize"),
    ({"type": "GBF", "attributes": {"gssize": 2**63, "mountpoint": "/m"}}, "attributes.gssize"),
    ({"type": "GBF", "attributes": {"gssize": 1.5, "mountpoint": "/m"}}, "attributes.gssize"),
    ({"type": "GBF", "attributes": {"cores": -1, "gssize": 1, "mountpoint": "/m"}},
     "attributes.cores"),
    ({"type": "GBF", "attributes": {"gssize": 1, "mountpoint": "relative"}},
     "attributes.mountpoint"),
    ({"name": "a/b"}, "name"),
    ({"name": "../etc"}, "name"),
    ({"name": "a b"}, "name"),
    ({"name": "a\nb"}, "name"),
    ({"name": "ab\n"}, "name"),
    ({"user": "alice\n"}, "user"),
    ({"name": "a;rm -rf"}, "name"),
    ({"name": "$(id)"}, "name"),
    ({"name": "a\u0000b"}, "name"),
    ({"name": "-rf"}, "name"),
    ({"name": ""}, "name"),
    ({"name": 5}, "name"),
    ({"user": "root;x"}, "user"),
    ({"user_slurm_token": "a\u0000"}, "user_slurm_token"),
    ({"attributes": []}, "attributes"),
]


@pytest.mark.parametrize(("change", "field"), INVALID)
def test_malformed_reserve_is_400_naming_the_field_and_changes_nothing(client, change, field):
    """Every malformed reserve: 400, the field named, no state changed."""
    before = total_free(client)
    b = body()
    b.update(change)
    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=b)
    assert r.status_code == 400, r.text
    assert r.json["field"] == field
    assert r.json["message"] and r.json["title"] and r.json["description"]
    assert total_free(client) == before
    assert client.simulate_get("/v1.0.0/ephemeralservice/status").json == []


@pytest.mark.parametrize("missing", ["name", "user", "user_slurm_token", "type", "attributes"])
def test_missing_required_field_is_400(client, missing):
    """A missing required field is named."""
    b = body()
    del b[missing]
    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=b)
    assert r.status_code == 400 and r.json["field"] == missing


@pytest.mark.parametrize("payload", [b"{not json", b"[1,2]", b"\xff\xfe", b"", b"null",
                                     b'"text"', b'{"name": "a\\u0000"}'])
def test_non_object_or_invalid_json_is_400(client, payload):
    """Invalid JSON or a body that is not an object: 400."""
    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", body=payload,
                             headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert "message" in r.json


def test_body_over_one_mib_is_413(client):
    """Bodies over 1 MiB are refused with 413."""
    big = b'{"name": "' + b"a" * (1024 * 1024) + b'"}'
    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", body=big,
                             headers={"Content-Type": "application/json"})
    assert r.status_code == 413


@pytest.mark.parametrize("name", ["a%2Fb", "..", "a%20b", "a%0Ab", "%24(id)", "a%00b", "ab%0A"])
def test_bad_names_in_paths_are_400(client, name):
    """Path names with '/', '..', spaces, newlines or shell characters: 400."""
    for method, path in [("GET", f"/v2.0.0/server/allocation/{name}"),
                         ("DELETE", f"/v2.0.0/server/allocation/{name}"),
                         ("GET", f"/v1.0.0/server/resources/{name}"),
                         ("GET", f"/v1.0.0/ephemeralservice/status/{name}")]:
        r = client.simulate_request(method, path)
        assert r.status_code in (400, 404), (method, path, r.status_code)
        assert r.status_code != 500


def test_curl_default_form_content_type_is_read_as_json(client):
    """curl -d without -H sends form-urlencoded: the JSON body is still read as JSON."""
    import json

    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", body=json.dumps(SBB),
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text


def test_non_json_content_type_is_415(client):
    """A multipart or XML body is refused with 415 naming Content-Type."""
    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", body="<a/>",
                             headers={"Content-Type": "application/xml"})
    assert r.status_code == 415 and r.json["field"] == "Content-Type"


def test_user_slurm_token_is_forgotten_once_released(app_factory):
    """The stored user_slurm_token is erased when the reservation is released."""
    client, rm, store = app_factory()
    client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=SBB)
    assert store.query("SELECT token FROM reservation")[0]["token"] == "tok"  # noqa: S105
    client.simulate_delete("/v2.0.0/server/allocation/alice_s1_sbb")
    assert store.query("SELECT token FROM reservation")[0]["token"] is None


# --- commits: the answer leaves after the commit, whichever thread serves ----------


def on_the_loop():
    """The environ the server gives a request it serves on its event loop."""
    from wfm_orchestrator.api.serving import LOOP
    from wfm_orchestrator.http.channel import LoopRequest

    request = LoopRequest(lambda callback: None)
    return request, {LOOP: request}


REFUSE_INSERTS = ("CREATE TRIGGER refuse BEFORE INSERT ON reservation "
                  "BEGIN SELECT RAISE(ABORT, 'disk full'); END")


def test_a_refused_commit_is_a_500_and_the_state_is_reloaded(app_factory, tmp_path):
    """The resource manager forgets what the database refused, on a worker..."""
    client, rm, store = app_factory(state_db=str(tmp_path / "state.db"))  # SQLite's trigger
    store.write([(REFUSE_INSERTS, ())]).wait()
    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=SBB)
    assert r.status_code == 500
    assert r.json["title"] == "State database unavailable" and "disk full" in r.json["message"]
    assert rm.get(SBB["name"]) is None  # reloaded from the database: never reserved
    assert free(client, "dn1")["free_cores"] == 8


def test_a_refused_commit_on_the_loop_reloads_the_state_the_same_way(app_factory, tmp_path):
    """...and on the loop, where the answer is held: the store's writer reloads, not the server."""
    client, rm, store = app_factory(state_db=str(tmp_path / "state.db"))  # SQLite's trigger
    store.write([(REFUSE_INSERTS, ())]).wait()
    request, environ = on_the_loop()
    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=SBB, extras=environ)
    assert r.status_code == 200  # held by the server until its commit...
    [ticket] = request.tickets
    store.flush()  # ...which the server's loop asks for at the end of its turn
    poll_until(lambda: ticket.done, "the refused commit reported", timeout=5)
    assert ticket.failure() is not None and "disk full" in str(ticket.failure())
    assert rm.get(SBB["name"]) is None
    assert free(client, "dn1")["free_cores"] == 8


def test_a_refused_commit_whose_reload_fails_too_is_served_503_until_it_is_read(
        app_factory, tmp_path, monkeypatch):
    """A refused commit while the database cannot be read either (a PostgreSQL failover):
    the reload must not leave the reservations half-read, nor decide anything on the
    records in memory (they hold what was refused). Every request that needs them is
    answered 503 (nothing done, with a Retry-After) until a read succeeds; then the
    acknowledged state is served whole, the refused reservation absent."""
    import wfm_orchestrator.resource_manager as resource_manager
    from wfm_orchestrator.errors import StoreError

    monkeypatch.setattr(resource_manager, "REREAD_FIRST_DELAY", 0.05)
    client, rm, store = app_factory(state_db=str(tmp_path / "state.db"))  # SQLite's trigger
    first = dict(SBB, name="alice_first_sbb")
    assert client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=first).status_code == 200
    cores = free(client, "dn1")["free_cores"]
    store.write([(REFUSE_INSERTS, ())]).wait()
    rows = store.rows

    def unreachable(*args, **kwargs):
        raise StoreError("state database: read failed: connection refused")

    monkeypatch.setattr(store, "rows", unreachable)
    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=SBB)
    assert r.status_code == 500  # the refused commit itself: its outcome is the database's
    for method, path in (("GET", "/v1.0.0/ephemeralservice/status/alice_first_sbb"),
                         ("GET", "/v2.0.0/server/allocation/alice_first_sbb"),
                         ("DELETE", "/v2.0.0/server/allocation/alice_first_sbb"),
                         ("GET", "/v1.0.0/server/resources/dn1")):
        r = client.simulate_request(method, path)
        assert r.status_code == 503, (method, path, r.status_code, r.text)
        assert r.json["title"] == "State being read again"
        assert "connection refused" in r.json["message"] and "nothing was done" in r.json["message"]
        assert r.headers["retry-after"] == "2"
    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=dict(SBB, name="alice_2_sbb"))
    assert r.status_code == 503
    monkeypatch.setattr(store, "rows", rows)  # the database answers again
    poll_until(lambda: client.simulate_get("/v1.0.0/ephemeralservice/status/alice_first_sbb")
               .status_code == 200, "served again once the state was read", timeout=10)
    assert rm.get("alice_first_sbb").state.value == "FREE"
    assert rm.get(SBB["name"]) is None and rm.get("alice_2_sbb") is None
    assert free(client, "dn1")["free_cores"] == cores  # nothing freed, nothing granted twice
    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=dict(SBB, name="alice_3_sbb"))
    assert r.status_code == 500  # the trigger still refuses: an ordinary refused commit
    assert rm.get("alice_first_sbb") is not None


def test_a_retried_reserve_waits_for_the_first_ones_commit(app_factory):
    """An idempotent retry is not answered before the first reserve's write is committed."""
    client, rm, store = app_factory()
    first, environ = on_the_loop()
    client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=SBB, extras=environ)
    retry, environ = on_the_loop()
    client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=SBB, extras=environ)
    assert retry.tickets == first.tickets and not first.tickets[0].done  # still queued
    first.tickets[0].wait()
    again, environ = on_the_loop()
    client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=SBB, extras=environ)
    assert again.tickets[0].done  # committed: nothing left to wait for
