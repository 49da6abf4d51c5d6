"""Which job may bind, use and tear down a reservation through the plugin (binding.py, #15).

The use case on a real store with the fake Slurm (the ``world``: SBB is a type the
orchestrator starts itself), then the HTTP forms: query parameters, their validation,
and the plugin's role that must send them.
"""

import pytest

from tests.conftest import SBB
from wfm_orchestrator.binding import Binding, MustAskSlurm, NotUsable
from wfm_orchestrator.errors import AlreadyAllocated, Forbidden, InvalidRequest
from wfm_orchestrator.service_job import job_tag

from .conftest import ACCOUNTS

NAME = SBB["name"]  # alice's
ALICE, BOB = ACCOUNTS["alice"], ACCOUNTS["bob"]


def binding(world) -> Binding:
    return Binding(world.rm, world.sm, world.rm.accounts)


def submitted(world) -> int:
    """Reserve alice's SBB and let the orchestrator submit its job: the job id."""
    world.reserve()
    world.sm.reconcile()
    return world.sm.job(NAME).job_id


def state(world) -> str:
    return world.rm.get(NAME).state.value


def test_the_service_job_of_the_owner_binds_and_is_recorded(world):
    job_id = submitted(world)
    alloc, ticket = binding(world).bind(NAME, job_id, ALICE)
    ticket.wait()
    assert alloc["name"] == NAME and alloc["servers"] == 1
    assert state(world) == "ALLOCATED" and world.rm.get(NAME).bound_job == job_id
    world.restart()  # the binder is durable
    assert world.rm.get(NAME).bound_job == job_id


def test_a_job_of_another_user_may_not_bind_and_nothing_changes(world):
    job_id = submitted(world)
    before = world.status()
    with pytest.raises(Forbidden) as e:
        binding(world).bind(NAME, job_id, BOB)
    assert e.value.field == "uid"
    assert "belongs to another user" in e.value.message and NAME in e.value.message
    assert f"job {job_id} (uid {BOB})" in e.value.message
    assert state(world) == "FREE" and world.status() == before
    # The owner's own job still binds it afterwards.
    binding(world).bind(NAME, job_id, ALICE)[1].wait()
    assert state(world) == "ALLOCATED"


def test_another_job_of_the_owner_may_not_bind_a_service_the_orchestrator_starts(world):
    job_id = submitted(world)
    with pytest.raises(Forbidden) as e:
        binding(world).bind(NAME, job_id + 50, ALICE)
    assert e.value.field == "job_id"
    assert f"not the service job the orchestrator submitted for it (job {job_id})" \
        in e.value.message
    assert state(world) == "FREE"


def test_the_binding_job_gets_its_allocation_again_and_no_other_job_does(world):
    job_id = submitted(world)
    b = binding(world)
    first, ticket = b.bind(NAME, job_id, ALICE)
    ticket.wait()
    again, ticket = b.bind(NAME, job_id, ALICE)  # setup re-run after a slurmctld restart
    ticket.wait()
    assert again == first and world.rm.get(NAME).bound_job == job_id
    with pytest.raises(Forbidden):
        b.bind(NAME, job_id + 1, ALICE)  # the owner's other job: not the service job
    with pytest.raises(Forbidden):
        b.bind(NAME, job_id, BOB)  # the right job id, the wrong uid


def test_a_type_the_orchestrator_does_not_start_is_bound_by_any_job_of_its_owner(world):
    body = dict(SBB, name="alice_s_dasi", type="DASI",  # no EphemeralService=DASI record
                attributes={"gssize": 10, "mountpoint": "/m"})
    world.reserve(body)
    b = binding(world)
    with pytest.raises(Forbidden):
        b.bind("alice_s_dasi", 777, BOB)
    b.bind("alice_s_dasi", 777, ALICE)[1].wait()
    with pytest.raises(AlreadyAllocated, match="already ALLOCATED by job 777"):
        b.bind("alice_s_dasi", 778, ALICE)


def test_a_binding_before_the_submission_is_recorded_asks_slurm(world):
    """The plugin's call may come before the orchestrator stored the job id (its
    submission's answer in flight, or a crash before it was stored): Slurm decides."""
    world.reserve()
    job = world.sm.job(NAME)
    assert job.job_id is None
    world.slurm.put(555, NAME, job.tag, "PENDING", user="alice", partition="data")
    b = binding(world)
    with pytest.raises(MustAskSlurm):
        b.bind(NAME, 555, ALICE, may_block=False)  # the event loop: hand to a worker
    assert state(world) == "FREE"
    b.bind(NAME, 555, ALICE)[1].wait()
    assert state(world) == "ALLOCATED" and world.sm.job(NAME).job_id == 555


@pytest.mark.parametrize(("user", "partition", "nonce"), [
    ("alice", "data", False),  # the tag without its secret nonce: guessed from name and seq
    ("alice", "compute", True),  # the tag copied, on another partition
    ("bob", "data", True),  # (bob's uid is refused before Slurm is asked; see below)
])
def test_an_unrecorded_look_alike_is_refused(world, user, partition, nonce):
    world.reserve()
    job = world.sm.job(NAME)
    tag = job.tag if nonce else job_tag(NAME, job.seq)
    world.slurm.put(556, NAME, tag, "PENDING", user=user, partition=partition)
    with pytest.raises(Forbidden) as e:
        binding(world).bind(NAME, 556, ACCOUNTS[user])
    assert "may not bind" in e.value.message
    assert state(world) == "FREE" and world.sm.job(NAME).job_id is None


def test_a_teardown_releases_only_what_its_own_job_bound(world):
    job_id = submitted(world)
    b = binding(world)
    with pytest.raises(Forbidden) as e:  # FREE, bound by no job
        b.unbind(NAME, job_id)
    assert "bound by no job" in e.value.message and "nothing was released" in e.value.message
    b.bind(NAME, job_id, ALICE)[1].wait()
    world.restart()  # proven by the stored record, after a restart too
    b = binding(world)
    with pytest.raises(Forbidden) as e:
        b.unbind(NAME, 9999)
    assert f"bound by job {job_id}" in e.value.message and e.value.field == "job_id"
    assert state(world) == "ALLOCATED"
    b.unbind(NAME, job_id).wait()
    assert state(world) == "RELEASED"


def test_the_spec_form_without_identity_is_unchecked(world):
    job_id = submitted(world)
    b = binding(world)
    b.bind(NAME)[1].wait()  # an administrator's call
    assert world.rm.get(NAME).bound_job is None
    with pytest.raises(Forbidden):
        b.unbind(NAME, job_id)  # no job bound it: no teardown may release it
    b.unbind(NAME).wait()
    assert state(world) == "RELEASED"
    assert job_id is not None


def test_a_binding_names_both_job_and_uid(world):
    world.reserve()
    with pytest.raises(InvalidRequest) as e:
        binding(world).bind(NAME, 5, None)
    assert e.value.field == "uid"


def test_a_step_job_may_use_only_its_own_users_services(world):
    world.reserve()
    b = binding(world)
    status = world.status()
    assert b.usable(NAME, ALICE, status) is status
    with pytest.raises(NotUsable) as other:
        b.usable(NAME, BOB, status)
    with pytest.raises(NotUsable) as missing:
        b.usable("bob_s_none", BOB, None)
    assert "a job may use only its own user's services" in str(other.value)
    # Existence is not revealed: the same words for another's and for none.
    assert str(other.value).replace(NAME, "X") == str(missing.value).replace("bob_s_none", "X")


# --- the HTTP forms (auth = none: the anonymous administrator) -------------------------

RESERVE = {"name": "alice_s_x", "user": "alice", "user_slurm_token": "t", "type": "GBF",
           "attributes": {"gssize": 10, "mountpoint": "/m"}}
ALLOC = "/v2.0.0/server/allocation/alice_s_x"
STATUS = "/v1.0.0/ephemeralservice/status/alice_s_x"


def test_http_bind_refusal_is_403_naming_the_rule_and_the_reservation_stays(client):
    assert client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=RESERVE).status_code \
        == 200
    r = client.simulate_get(ALLOC, params={"job_id": "42", "uid": str(BOB)})
    assert r.status_code == 403
    assert r.json["field"] == "uid" and "belongs to another user" in r.json["message"]
    assert client.simulate_get(STATUS).json["status"] == "STAGINGIN"
    assert client.simulate_get(ALLOC, params={"job_id": "42", "uid": str(ALICE)}) \
        .status_code == 200
    assert client.simulate_get(ALLOC, params={"job_id": "42", "uid": str(ALICE)}) \
        .status_code == 200  # its own setup again
    assert client.simulate_get(ALLOC, params={"job_id": "43", "uid": str(ALICE)}) \
        .status_code == 501
    r = client.simulate_delete(ALLOC, params={"job_id": "43"})
    assert r.status_code == 403 and "did not bind" in r.json["message"]
    assert client.simulate_get(STATUS).json["status"] == "ALLOCATED"
    assert client.simulate_delete(ALLOC, params={"job_id": "42"}).status_code == 200
    assert client.simulate_get(STATUS).json["status"] == "STOPPED"


@pytest.mark.parametrize(("params", "field"), [
    ({"job_id": "0", "uid": "1001"}, "job_id"),
    ({"job_id": "-1", "uid": "1001"}, "job_id"),
    ({"job_id": "1x", "uid": "1001"}, "job_id"),
    ({"job_id": "4294967296", "uid": "1001"}, "job_id"),
    ({"job_id": "5", "uid": "alice"}, "uid"),
    ({"job_id": "5"}, "uid"),
    ({"uid": "1001"}, "job_id"),
])
def test_http_bad_or_half_identity_is_400_naming_the_parameter(client, params, field):
    client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=RESERVE)
    r = client.simulate_get(ALLOC, params=params)
    assert r.status_code == 400 and r.json["field"] == field, r.text
    assert client.simulate_get(STATUS).json["status"] == "STAGINGIN"  # unbound


def test_http_status_for_a_step_job_answers_only_its_users_services(client):
    client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=RESERVE)
    r = client.simulate_get(STATUS, params={"uid": str(ALICE)})
    assert r.status_code == 200 and r.json["name"] == "alice_s_x"
    r = client.simulate_get(STATUS, params={"uid": str(BOB)})
    assert r.status_code == 500 and "only its own user's services" in r.json["message"]
    r = client.simulate_get("/v1.0.0/ephemeralservice/status/alice", params={"uid": str(ALICE)})
    assert r.status_code == 500  # with uid, the segment is a service name only


def test_the_plugins_role_must_say_which_job_and_uid(secured):
    client, tokens = secured
    bb = {"Authorization": f"Bearer {tokens['bb']}"}
    sm = {"Authorization": f"Bearer {tokens['sm']}"}
    assert client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=RESERVE,
                                headers=sm).status_code == 200
    for path, field in ((ALLOC, "job_id"), (STATUS, "uid")):
        r = client.simulate_get(path, headers=bb)
        assert r.status_code == 400 and r.json["field"] == field, r.text
    r = client.simulate_delete(ALLOC, headers=bb)
    assert r.status_code == 400 and r.json["field"] == "job_id"
    r = client.simulate_get(ALLOC, params={"job_id": "7", "uid": str(ALICE)}, headers=bb)
    assert r.status_code == 200
    # The Session Manager reads statuses as before (no uid).
    assert client.simulate_get(STATUS, headers=sm).status_code == 200
