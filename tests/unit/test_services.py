"""Ephemeral services: the status state machine and the worker, with a fake Slurm client."""

from __future__ import annotations

import pytest

from wfm_orchestrator.model import ReservationState as RS
from wfm_orchestrator.model import ServiceStatus as S
from wfm_orchestrator.resource_manager import Reservation
from wfm_orchestrator.service_job import job_tag
from wfm_orchestrator.services import ServiceJob, build_service_job, derive_status

from ..conftest import SBB, SMALL_CONF
from ..jwks_fixture import FakeClock
from ..poll import poll_until


def test_service_job_is_submitted_as_the_user_pinned_to_its_datanodes(world):
    """FREE -> the job: data partition, the reserved nodes, cores, memory, directive, tag."""
    rec = world.reserve()
    world.sm.reconcile()
    spec, user, token = world.slurm.submitted[0]
    assert (user, token) == ("alice", "alice-token")
    assert spec.partition == "data" and list(spec.nodes) == ["dn1"]
    assert (spec.cpus_per_node, spec.memory_per_node) == (2, 5120)
    assert [b.verb for b in spec.bb] == ["wfm_service"] and dict(spec.bb[0].params) == {
        "name": "alice_s_sbb"}
    nonce = world.sm.job(rec.name).nonce
    assert len(nonce) == 16 and int(nonce, 16) >= 0  # secrets.token_hex(8)
    assert spec.comment == job_tag("alice_s_sbb", rec.seq, nonce) == world.sm.job(rec.name).tag
    assert spec.environment["WFM_TARGETS"] == "/a/*\n/b/*"
    assert list(spec.command) == ["/usr/local/libexec/wfm/sbb-service", "--root", "/x"]


def test_status_follows_the_job_through_its_life(world):
    """STAGINGIN (pending) -> STAGEDIN (bound, pending) -> ALLOCATED (running) -> release
    -> STAGINGOUT -> STOPPED once the teardown deletes the reservation."""
    world.reserve()
    assert world.status()["status"] == "STAGINGIN"
    assert "submitting" in world.status()["detail"]
    world.sm.reconcile()
    world.sm.reconcile()
    st = world.status()
    assert st["status"] == "STAGINGIN" and st["detail"] == "Slurm job 100 pending: Resources"
    world.rm.allocate(SBB["name"])  # the plugin's setup
    st = world.status()
    assert st["status"] == "STAGEDIN" and "burst buffer set up on dn1" in st["detail"]
    world.slurm.put(100, "alice_s_sbb", "", "RUNNING")
    world.sm.reconcile()
    assert world.status() | {"time": "", "created": ""} == {
        "user": "alice", "name": "alice_s_sbb", "status": "ALLOCATED",
        "detail": "Slurm job 100 running on dn1", "time": "", "type": "SBB", "id": 1,
        "created": ""}
    answer = world.release(SBB["name"])
    assert answer["status"] == "STAGINGOUT"
    world.sm.reconcile()
    assert world.slurm.cancelled == [(100, "SIGKILL")]  # Slurm's graceful cancel
    world.slurm.put(100, "alice_s_sbb", "", "CANCELLED")
    world.sm.reconcile()
    st = world.status()
    assert st["status"] == "STAGEDOUT" and "waiting for the burst-buffer teardown" in st["detail"]
    world.rm.release(SBB["name"])  # the plugin's teardown
    assert world.status()["status"] == "STOPPED"
    assert world.rm.resources("dn1")["free_cores"] == 8


def test_queued_reservation_reports_its_position_and_submits_nothing(world):
    """QUEUED -> STAGINGIN "queued at position N"; no job until admitted."""
    big = {**SBB, "attributes": {"flavor": "large", "targets": "/x"}}
    for i in range(4):
        world.reserve({**big, "name": f"big{i}"})
    world.reserve()
    st = world.status()
    assert st["status"] == "STAGINGIN" and st["detail"].startswith("queued at position 1")
    world.sm.reconcile()
    assert [s.name for s, _, _ in world.slurm.submitted] == ["big0", "big1", "big2", "big3"]


def test_job_failing_outside_the_orchestrator_frees_resources_after_the_grace(world):
    """A job that ends on its own: TEARDOWN; freed by the orchestrator after teardown_grace."""
    world.reserve()
    world.sm.reconcile()
    world.rm.allocate(SBB["name"])
    world.slurm.put(100, "alice_s_sbb", "", "FAILED", "NonZeroExitCode")
    world.sm.reconcile()
    st = world.status()
    assert st["status"] == "TEARDOWN" and "Slurm job 100 ended FAILED (NonZeroExitCode)" in st[
        "detail"]
    assert world.rm.resources("dn1")["free_cores"] == 6  # the plugin's teardown may still come
    world.clock.now += 31
    world.sm.reconcile()
    st = world.status()
    assert st["status"] == "STOPPED" and "freed by the orchestrator" in st["detail"]
    assert world.rm.resources("dn1")["free_cores"] == 8


def test_job_forgotten_by_slurm_counts_as_ended(world):
    """A job Slurm no longer knows (MinJobAge) is GONE, then freed after the grace."""
    world.reserve()
    world.sm.reconcile()
    world.slurm.put(100, "alice_s_sbb", "", "RUNNING")
    world.sm.reconcile()
    del world.slurm.jobs_by_id[100]
    world.sm.reconcile()
    assert "no longer known to Slurm" in world.status()["detail"]
    world.clock.now += 31
    world.sm.reconcile()
    assert world.status()["status"] == "STOPPED"


def test_restart_adopts_the_job_submitted_before_the_crash(world):
    """A job whose id was never stored is found by its tag: no second submission."""
    rec = world.reserve()
    # As if an earlier run submitted it and died before storing the id:
    world.slurm.put(555, "alice_s_sbb", world.sm.job(rec.name).tag, "RUNNING", partition="data")
    world.restart()
    world.sm.reconcile()
    assert world.slurm.submitted == []
    assert world.sm.job(rec.name).job_id == 555
    world.restart()
    assert world.sm.job(rec.name).job_id == 555  # stored


def test_slurm_down_delays_and_reports_then_recovers(world):
    """slurmrestd unreachable: nothing lost, the detail says so, work resumes after."""
    world.reserve()
    world.slurm.down = True
    world.sm.reconcile()
    world.sm.reconcile()
    assert "Slurm unreachable" in world.status()["detail"]
    world.slurm.down = False
    world.sm.reconcile()
    assert len(world.slurm.submitted) == 1
    world.sm.reconcile()
    assert "Slurm unreachable" not in world.status()["detail"]


def test_refused_user_token_falls_back_to_the_slurmuser_token(world):
    """Slurm refuses the user's token (e.g. the SM's constant): submit as SlurmUser for him."""
    world.slurm.refuse_user_tokens = True
    world.reserve()
    world.sm.reconcile()
    assert [(u, t) for _, u, t in world.slurm.submitted] == [("alice", None)]


def test_release_of_a_queued_or_unstarted_service_frees_at_once(world):
    """Release before any job exists: the reservation is deleted at once (STOPPED)."""
    world.reserve()
    world.release(SBB["name"])
    assert world.status()["status"] == "STOPPED"
    assert "before its service job started" in world.status()["detail"]
    world.sm.reconcile()
    assert world.slurm.submitted == []


def test_release_of_unknown_or_released_service_is_not_found(world):
    """An unknown or already released name: NotFound (the API answers the spec's 500)."""
    from wfm_orchestrator.errors import NotFound

    with pytest.raises(NotFound):
        world.release("nobody")
    world.reserve()
    world.release(SBB["name"])
    with pytest.raises(NotFound):
        world.release(SBB["name"])


def test_release_is_retried_with_sigkill_after_the_timeout(world):
    """A service that does not stop within release_timeout is cancelled again."""
    world.reserve()
    world.sm.reconcile()
    world.slurm.put(100, "alice_s_sbb", "", "RUNNING")
    world.release(SBB["name"])
    world.sm.reconcile()
    world.sm.reconcile()
    assert len(world.slurm.cancelled) == 1
    world.clock.now += 101
    world.sm.reconcile()
    assert len(world.slurm.cancelled) == 2


def test_release_intent_survives_a_restart(world):
    """The release is durable: after a restart the job is still cancelled."""
    world.reserve()
    world.sm.reconcile()
    world.slurm.put(100, "alice_s_sbb", "", "RUNNING")
    world.release(SBB["name"])
    world.restart()
    world.sm.reconcile()
    assert world.slurm.cancelled == [(100, "SIGKILL")]


def test_type_without_launch_command_waits_for_an_external_job(world):
    """No EphemeralService record for the type: nothing submitted, the detail says why."""
    world.reserve({"name": "g", "user": "bob", "user_slurm_token": "t", "type": "GBF",
                   "attributes": {"gssize": 10, "mountpoint": "/m"}})
    world.sm.reconcile()
    assert world.slurm.submitted == []
    assert "no launch command configured for type GBF" in world.status("g")["detail"]


def rec_at(state, placement=True):
    from wfm_orchestrator.allocator import Placement
    from wfm_orchestrator.model import ReserveRequest

    req = ReserveRequest("n", "u", "t", "SBB", 1, 1, 1, 0, (), "small", ("/x",), None)
    return Reservation(req, state, 1, 10.0, 20.0,
                       placement=[Placement("dn1", [0], 1, 0)] if placement else None,
                       detail="gone")


J = ServiceJob("n", 1, 7, "PENDING", "Resources", "dn1", None, "", None, 30.0)
STATE_TABLE = [
    # reservation, job, slurm, launch -> status, detail fragment
    (RS.QUEUED, None, True, True, S.STAGINGIN, "queued at position 3"),
    (RS.FREE, None, False, True, S.STAGINGIN, "no Slurm configured"),
    (RS.ALLOCATED, None, True, False, S.ALLOCATED, "no launch command"),
    (RS.FREE, ServiceJob("n", 1), True, True, S.STAGINGIN, "submitting the service job"),
    (RS.FREE, ServiceJob("n", 1, error="bad token"), True, True, S.STAGINGIN, "bad token"),
    (RS.FREE, J, True, True, S.STAGINGIN, "Slurm job 7 pending: Resources"),
    (RS.ALLOCATED, J, True, True, S.STAGEDIN, "burst buffer set up"),
    (RS.ALLOCATED, ServiceJob("n", 1, 7, "RUNNING"), True, True, S.ALLOCATED, "running on dn1"),
    (RS.FREE, ServiceJob("n", 1, 7, "RUNNING"), True, True, S.STAGINGIN, "not yet bound"),
    (RS.ALLOCATED, ServiceJob("n", 1, 7, "RUNNING", release_requested=1.0), True, True,
     S.STAGINGOUT, "stopping: Slurm job 7 RUNNING"),
    (RS.ALLOCATED, ServiceJob("n", 1, 7, "CANCELLED", release_requested=1.0), True, True,
     S.STAGEDOUT, "waiting for the burst-buffer teardown"),
    (RS.ALLOCATED, ServiceJob("n", 1, 7, "FAILED", exit_code=256), True, True, S.TEARDOWN,
     "ended FAILED, exit status 1"),
    (RS.RELEASED, J, True, True, S.STOPPED, "gone"),
]


@pytest.mark.parametrize(("state", "job", "slurm", "launch", "status", "fragment"), STATE_TABLE)
def test_each_transition_of_the_status_state_machine(state, job, slurm, launch, status,
                                                     fragment):
    """derive_status: one row per state of docs/state-machines.md."""
    got, detail, when = derive_status(rec_at(state), 3, job, slurm=slurm, launch=launch)
    assert got == status
    assert fragment in detail
    assert when == max(20.0, job.updated if job else 0.0)


def test_service_job_of_a_zero_core_zero_memory_service_asks_the_smallest_unit(world):
    """cores 0 / msize 0 become 1 CPU / 1 MB: Slurm's 0 MB would mean the whole node."""
    cfg = world.config
    from wfm_orchestrator.allocator import Placement
    from wfm_orchestrator.model import ReserveRequest

    req = ReserveRequest("z", "u", "t", "SBB", 1, 0, 0, 0, (), None, ("/x",), None)
    rec = Reservation(req, RS.FREE, 1, 0, 0, placement=[Placement("dn2", [], 0, 0)])
    spec = build_service_job(cfg, rec, job_tag("z", 1, "00"))
    assert (spec.cpus_per_node, spec.memory_per_node, list(spec.nodes)) == (1, 1, ["dn2"])


def test_released_service_followed_after_teardown_is_not_freed_again(world, caplog):
    """A service whose teardown already freed it is not 'freed by the orchestrator' again."""
    world.reserve()
    world.sm.reconcile()
    world.slurm.put(100, "alice_s_sbb", "", "RUNNING")
    world.release(SBB["name"])
    world.sm.reconcile()
    world.slurm.put(100, "alice_s_sbb", "", "CANCELLED")
    world.sm.reconcile()
    world.rm.release(SBB["name"])  # the plugin's teardown
    world.clock.now += 31
    caplog.clear()
    for _ in range(3):
        world.sm.reconcile()
    assert "freed by the orchestrator" not in caplog.text
    assert "reservation deleted" in world.status()["detail"]


# --- forgetting released services (released_retention) --------------------------------

def gbf(name):
    return {"name": name, "user": "alice", "user_slurm_token": "t", "type": "GBF",
            "attributes": {"gssize": 10, "mountpoint": "/m"}}


NAMES_IN = {"reservation": "SELECT name FROM reservation",
            "service_job": "SELECT name FROM service_job"}


def names_in_db(world, table="reservation"):
    return sorted(row["name"] for row in world.store.query(NAMES_IN[table]))


def test_released_reservations_are_forgotten_after_the_retention(world):
    """Released longer than released_retention: gone from the lists, memory and database."""
    retention = world.config.released_retention
    for name in ("alice_a", "alice_b", "alice_c"):
        world.reserve(gbf(name))
    world.rm.release("alice_a")
    world.rm.release("alice_c")
    world.clock.now += retention - 1
    assert world.sm.forget_released() == []
    world.clock.now += 2
    # alice_c, the newest reservation, is kept: new ones continue its sequence number.
    assert world.sm.forget_released() == ["alice_a"]
    assert world.rm.get("alice_a") is None and world.status("alice_a") is None
    assert [s["name"] for s in world.sm.statuses()] == ["alice_b", "alice_c"]
    assert names_in_db(world) == ["alice_b", "alice_c"]
    seq_c = world.rm.get("alice_c").seq

    world.restart()
    assert world.rm.get("alice_a") is None
    again = world.reserve(gbf("alice_a"))  # a forgotten name is a new reservation
    assert again.state == RS.FREE and again.seq > seq_c


def test_a_released_service_whose_job_still_runs_is_kept(world):
    """Its job is still followed (and cancelled): forgotten only once the job ended."""
    world.reserve()
    world.sm.reconcile()
    world.slurm.put(100, SBB["name"], world.sm.job(SBB["name"]).tag, "RUNNING")
    world.sm.reconcile()
    world.rm.release(SBB["name"])  # e.g. freed by the teardown, job not stopped
    world.reserve(gbf("alice_newer"))
    world.clock.now += world.config.released_retention + 1
    world.sm.reconcile()
    assert world.sm.forget_released() == []
    assert names_in_db(world, "service_job") == [SBB["name"]]

    world.slurm.put(100, SBB["name"], world.sm.job(SBB["name"]).tag, "COMPLETED")
    world.sm.reconcile()
    assert world.sm.job(SBB["name"]).ended
    assert world.sm.forget_released() == [SBB["name"]]
    assert world.sm.job(SBB["name"]) is None
    assert names_in_db(world, "service_job") == []
    assert names_in_db(world) == ["alice_newer"]


def test_housekeeping_forgets_without_slurm(make_config, state_db):
    """Resource Manager only: the housekeeping thread still runs (at start, then every 10 min)."""
    from wfm_orchestrator.model import parse_reserve
    from wfm_orchestrator.resource_manager import ResourceManager
    from wfm_orchestrator.services import ServiceManager
    from wfm_orchestrator.store import Store

    config = make_config(SMALL_CONF)
    clock = FakeClock(1_000_000.0)
    store = Store(config.state_db)
    try:
        rm = ResourceManager(config, store, clock=clock)
        sm = ServiceManager(config, rm, store, None, clock=clock)
        for name in ("alice_old", "alice_new"):
            rm.reserve(parse_reserve(gbf(name), config))
        rm.release("alice_old")
        clock.now += config.released_retention + 1
        sm.start()
        try:
            poll_until(lambda: rm.get("alice_old") is None, "housekeeping forgets alice_old",
                       timeout=5, interval=0.02, last=lambda: rm.get("alice_old"))
        finally:
            sm.stop()
        assert rm.get("alice_new") is not None
    finally:
        store.close()
