"""Services for the length of one job (job_services.py, #18), and the limits file the plugin
reads at submission (plugin_limits.py).

The use case on a real store with the fake Slurm (the ``world``: SBB is a type the
orchestrator starts itself), then the HTTP forms.
"""

import json
import os
import stat

import pytest
from falcon import testing

from tests.fake_slurm import FakeSlurm
from wfm_orchestrator.api import create_app
from wfm_orchestrator.errors import Forbidden, InvalidRequest, RequestFailed
from wfm_orchestrator.job_services import JobServices
from wfm_orchestrator.model import job_service_name, parse_reserve
from wfm_orchestrator.plugin_limits import build_limits, write_limits
from wfm_orchestrator.slurm import JobState

from .conftest import ACCOUNTS

ALICE, BOB = ACCOUNTS["alice"], ACCOUNTS["bob"]
JOB = 4242
DIRECTIVE = "#BB_LUA wfm_job type=SBB flavor=small targets=/a/* name=scratch"
LINE = {"name": "scratch", "type": "SBB", "attributes": {"flavor": "small", "targets": ["/a/*"]}}
NAME = "alice_job4242_scratch"


def put_job(slurm: FakeSlurm, job_id: int = JOB, user: str = "alice", state: str = "PENDING",
            bb: str = DIRECTIVE) -> None:
    """Slurm lists the user's batch job ``job_id`` carrying ``bb`` (its #BB_LUA lines)."""
    slurm.jobs_by_id[job_id] = JobState(job_id, "app", "", state, "BurstBufferStageIn", (),
                                        None, user, "compute", burst_buffer=bb)


def job_services(world) -> JobServices:
    return JobServices(world.config, world.rm, world.sm, world.slurm, world.rm.accounts)


def reserved(world, line=LINE, job_id=JOB, uid=ALICE):
    rec, ticket = job_services(world).reserve(job_id, uid, line)
    ticket.wait()
    return rec


# --- the name ------------------------------------------------------------------------


def test_the_name_is_derived_from_user_job_and_short_name():
    assert job_service_name("alice", 4242) == "alice_job4242"
    assert job_service_name("alice", 4242, "scratch") == "alice_job4242_scratch"


@pytest.mark.parametrize("name", ["alice_job12", "alice_job12_scratch", "a.b_job1_x-2"])
def test_an_ordinary_reserve_may_not_take_a_jobs_name(world, name):
    body = {"name": name, "user": "alice", "user_slurm_token": "t", "type": "SBB",
            "attributes": {"flavor": "small", "targets": "/a/*"}}
    with pytest.raises(InvalidRequest) as e:
        parse_reserve(body, world.config)
    assert e.value.field == "name" and "job-scoped" in e.value.message


@pytest.mark.parametrize("name", ["alice_s1_sbb", "alice_jobs_x", "alice_job_x", "job12"])
def test_names_not_of_the_job_form_stay_free(world, name):
    body = {"name": name, "user": "alice", "user_slurm_token": "t", "type": "SBB",
            "attributes": {"flavor": "small", "targets": "/a/*"}}
    assert parse_reserve(body, world.config).name == name


# --- POST server/jobservice: the use case --------------------------------------------


def test_a_job_gets_its_service_for_its_user_submitted_by_the_orchestrator(world):
    put_job(world.slurm)
    rec = reserved(world)
    assert rec.name == NAME and rec.request.user == "alice" and rec.request.job_id == JOB
    assert rec.state.value == "FREE" and rec.claimed
    world.sm.reconcile()  # the orchestrator submits its service job, as the user
    spec, user, token = world.slurm.submitted[-1]
    assert spec.name == NAME and user == "alice" and token is None
    status = world.status(NAME)
    assert status["scope"] == "job" and status["job_id"] == JOB
    assert status["servers"] == [p.server for p in rec.placement]


def test_the_same_line_again_is_the_same_reservation(world):
    put_job(world.slurm)
    first = reserved(world)
    again = reserved(world)  # setup re-run (slurmctld restart, requeue)
    assert again is first and len(world.rm.live()) == 1
    world.restart()  # job_id is durable
    assert world.rm.get(NAME).request.job_id == JOB
    assert reserved(world).seq == first.seq


def test_a_line_without_a_short_name_is_named_after_the_job_alone(world):
    put_job(world.slurm)
    assert reserved(world, {k: v for k, v in LINE.items() if k != "name"}).name \
        == "alice_job4242"


def test_a_job_of_another_user_gets_nothing(world):
    put_job(world.slurm, user="bob")
    with pytest.raises(Forbidden) as e:
        reserved(world, uid=ALICE)
    assert e.value.field == "uid" and "runs as another user" in e.value.message
    assert world.rm.live() == []


@pytest.mark.parametrize("state", [None, "COMPLETED", "CANCELLED"])
def test_a_job_slurm_does_not_list_alive_gets_nothing(world, state):
    if state:
        put_job(world.slurm, state=state)
    with pytest.raises(Forbidden) as e:
        reserved(world)
    assert e.value.field == "job_id" and f"job {JOB} (uid {ALICE})" in e.value.message
    assert world.rm.live() == []


def test_a_job_without_the_directive_gets_nothing(world):
    put_job(world.slurm, bb="#BB_LUA wfm_use name=alice_s_sbb")
    with pytest.raises(Forbidden) as e:
        reserved(world)
    assert e.value.field == "job_id" and "wfm_job" in e.value.message
    assert world.rm.live() == []


@pytest.mark.parametrize("line, field", [
    ({**LINE, "user": "bob"}, "user"),
    ({**LINE, "name": "has_underscore"}, "name"),
    ({**LINE, "name": "x" * 33}, "name"),
    ({**LINE, "type": "XYZ"}, "type"),
    ({"type": "SBB", "attributes": {"flavor": "small"}}, "attributes.targets"),
    ([1, 2], "body"),
])
def test_a_bad_line_is_refused_naming_the_field(world, line, field):
    put_job(world.slurm)
    with pytest.raises(InvalidRequest) as e:
        reserved(world, line)
    assert e.value.field == field
    assert world.rm.live() == []


def test_a_line_that_can_never_fit_is_refused(world):
    put_job(world.slurm)
    with pytest.raises(RequestFailed) as e:
        reserved(world, {**LINE, "servers": 5})
    assert "can never fit" in e.value.message


def test_without_impersonation_a_type_the_orchestrator_starts_is_refused(world, make_config):
    from tests.conftest import SERVICE_CONF

    put_job(world.slurm)
    world.config = make_config(SERVICE_CONF.replace("impersonate_users = yes",
                                                    "impersonate_users = no"))
    with pytest.raises(InvalidRequest) as e:
        reserved(world)
    assert "impersonate_users" in e.value.message


def test_a_full_cluster_queues_the_jobs_service_in_order(world):
    from tests.conftest import LARGE

    for i in range(4):
        world.reserve({**LARGE, "name": f"alice_s_big{i}"})
    put_job(world.slurm)
    rec = reserved(world)
    assert rec.state.value == "QUEUED"
    assert world.status(NAME)["detail"].startswith("queued at position 1")


# --- DELETE server/jobservice ----------------------------------------------------------


def test_teardown_releases_every_service_of_its_job_and_nothing_else(world):
    put_job(world.slurm)
    put_job(world.slurm, job_id=JOB + 1)
    reserved(world)
    reserved(world, {**LINE, "name": "second"})
    other = reserved(world, job_id=JOB + 1)
    world.reserve()  # alice's ordinary service
    names, ticket = job_services(world).release(JOB)
    ticket.wait()
    assert sorted(names) == [NAME, "alice_job4242_second"]
    assert {r.name for r in world.rm.live()} == {other.name, "alice_s_sbb"}
    names, ticket = job_services(world).release(JOB)  # teardown run again
    assert names == [] and ticket is None


# --- the follower: a teardown that never came ------------------------------------------


def test_a_service_whose_job_ended_without_teardown_is_released_after_the_grace(world):
    put_job(world.slurm)
    js = job_services(world)
    reserved(world)
    put_job(world.slurm, state="RUNNING")
    world.sm.follower.cycle()
    world.clock.now += world.config.teardown_grace + 1
    world.sm.follower.cycle()
    assert world.status(NAME)["status"] != "STOPPED", "its job runs: kept"
    put_job(world.slurm, state="COMPLETED")
    world.sm.follower.cycle()
    assert world.rm.get(NAME).state.value != "RELEASED", "not before teardown_grace"
    world.clock.now += world.config.teardown_grace + 1
    world.sm.follower.cycle()
    world.sm.follower.cycle()
    status = world.status(NAME)
    assert status["status"] in ("STAGINGOUT", "STOPPED"), status
    assert f"job {JOB} ended COMPLETED and no burst-buffer teardown" in status["detail"]
    assert js.live() == [] or world.sm.job(NAME).release_requested


def test_a_service_whose_job_slurm_forgot_is_released_after_the_grace(world):
    put_job(world.slurm)
    job_services(world)
    reserved(world)
    del world.slurm.jobs_by_id[JOB]
    world.sm.follower.cycle()
    world.clock.now += world.config.teardown_grace + 1
    world.sm.follower.cycle()
    assert "is no longer known to Slurm" in world.status(NAME)["detail"]


def test_a_held_or_pending_job_keeps_its_services(world):
    put_job(world.slurm, state="PENDING")
    job_services(world)
    reserved(world)
    for _ in range(3):
        world.sm.follower.cycle()
        world.clock.now += world.config.teardown_grace + 1
    assert world.rm.get(NAME).state.value == "FREE"


# --- HTTP --------------------------------------------------------------------------------


def http(world) -> testing.TestClient:
    return testing.TestClient(create_app(world.config, world.rm, world.sm))


def test_http_post_reserves_and_delete_releases(world):
    put_job(world.slurm)
    c = http(world)
    r = c.simulate_post("/v2.0.0/server/jobservice", json=LINE,
                        params={"job_id": str(JOB), "uid": str(ALICE)})
    assert r.status_code == 200, r.text
    assert r.json["name"] == NAME and r.json["status"] == "FREE"
    assert r.json["scope"] == "job" and r.json["job_id"] == JOB
    listed = c.simulate_get("/v1.0.0/ephemeralservice/status").json
    assert [s["job_id"] for s in listed if s.get("scope") == "job"] == [JOB]
    r = c.simulate_delete("/v2.0.0/server/jobservice", params={"job_id": str(JOB)})
    assert r.status_code == 200 and r.json["released"] == [NAME]


def test_http_refusal_is_403_naming_the_field(world):
    put_job(world.slurm, user="bob")
    r = http(world).simulate_post("/v2.0.0/server/jobservice", json=LINE,
                                  params={"job_id": str(JOB), "uid": str(ALICE)})
    assert r.status_code == 403 and r.json["field"] == "uid"


@pytest.mark.parametrize("params, missing", [({"uid": "1001"}, "job_id"),
                                             ({"job_id": "7"}, "uid")])
def test_http_post_needs_job_and_uid_even_from_an_admin(world, params, missing):
    r = http(world).simulate_post("/v2.0.0/server/jobservice", json=LINE, params=params)
    assert r.status_code == 400 and r.json["field"] == missing


def test_http_delete_needs_the_job(world):
    r = http(world).simulate_delete("/v2.0.0/server/jobservice")
    assert r.status_code == 400 and r.json["field"] == "job_id"


# --- the limits file -------------------------------------------------------------------


def test_the_limits_name_types_flavors_locations_and_every_datanode(world):
    limits = build_limits(world.config)
    assert limits["version"] == 1 and limits["types"] == ["DASI", "GBF", "NFS", "SBB"]
    assert limits["flavors"]["small"] == {"cores": 2, "msize": 5120, "ssize": 0}
    assert limits["locations"] == {"loc1": ["loc2"], "loc2": ["loc1"]}
    assert limits["datanodes"][0] == {"name": "dn1", "location": "loc1", "cores": 8,
                                      "msize": 16384, "ssize": 1048576}
    assert len(limits["datanodes"]) == 4


def test_the_limits_file_is_written_whole_and_world_readable(make_config, tmp_path):
    from tests.conftest import SMALL_CONF

    path = tmp_path / "limits.json"
    config = make_config(SMALL_CONF + f"plugin_limits_file = {path}\n")
    os.umask(0o077)
    try:
        assert write_limits(config) == str(path)
    finally:
        os.umask(0o022)
    assert json.loads(path.read_text()) == build_limits(config)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".limits.")] == []


def test_no_limits_file_is_written_unless_named(world):
    assert write_limits(world.config) is None


def test_a_reload_rewrites_the_limits_file(make_config, tmp_path, state_db):
    from tests.conftest import SMALL_CONF
    from wfm_orchestrator.reloading import reload
    from wfm_orchestrator.resource_manager import ResourceManager
    from wfm_orchestrator.store import Store

    path = tmp_path / "limits.json"
    text = SMALL_CONF + f"plugin_limits_file = {path}\n"
    config = make_config(text)
    store = Store(config.state_db)
    try:
        rm = ResourceManager(config, store)
        (tmp_path / "wfm.conf").write_text(
            text.format(state_db=config.state_db, queue_policy="fifo")
            + "Flavor=huge MemorySize=1GB Cores=1\n")
        reload(config, rm)[1].wait()
        assert "huge" in json.loads(path.read_text())["flavors"]
    finally:
        store.close()
