"""Slurm restarts around service jobs, made deterministic with the unit tests' fake Slurm.

Both cases were found by test_slurm_faults.py on the mini-cluster:

* slurmctld killed right after a submission comes back without the job
  ("Purged files for defunct batch JobId=N": Slurm answers a submission
  before it saves its state). The service had been acknowledged; the
  orchestrator used to mark the job GONE and free the reservation 60 s
  later, so the service was silently given up.
* slurmctld killed while a released service's job is being cancelled
  recovers the job, requeues it and runs it again.
"""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.reliability


def running_service(world):
    """A reservation bound by its service's job (job 100), which runs."""
    rec = world.reserve()
    world.sm.reconcile()
    world.rm.allocate(rec.name)
    world.slurm.put(100, rec.name, "", "RUNNING")
    world.sm.reconcile()
    return rec


def release(world, rec) -> None:
    world.release(rec.name)
    world.sm.reconcile()


def test_job_lost_before_it_started_is_submitted_again(world):
    """PENDING, never bound, then unknown to Slurm: one new job, the service goes on."""
    rec = world.reserve()
    world.sm.reconcile()
    assert world.sm.job(rec.name).job_id == 100
    del world.slurm.jobs_by_id[100]  # slurmctld restarted without it
    world.sm.reconcile()
    world.sm.reconcile()
    assert len(world.slurm.submitted) == 2
    job = world.sm.job(rec.name)
    assert job.job_id == 101 and job.state == "PENDING"
    assert "Slurm job 101" in world.status()["detail"]
    assert world.rm.resources("dn1")["free_cores"] == 6  # still held for the service


def test_job_lost_after_it_was_bound_is_not_submitted_again(world):
    """Once the plugin bound the reservation the job ran: it is GONE, then freed."""
    rec = world.reserve()
    world.sm.reconcile()
    world.rm.allocate(rec.name)
    del world.slurm.jobs_by_id[100]
    world.sm.reconcile()
    world.sm.reconcile()
    assert len(world.slurm.submitted) == 1
    assert "no longer known to Slurm" in world.status()["detail"]


def test_released_job_requeued_by_a_restart_is_cancelled_again_at_once(world):
    """Found on the mini-cluster: slurmctld killed while a released service's job is being
    cancelled recovers it, requeues it and runs it again; the orchestrator used to wait
    release_timeout (120 s) before cancelling again, so the released service ran again."""
    rec = running_service(world)
    release(world, rec)
    assert world.slurm.cancelled == [(100, "SIGKILL")]
    world.slurm.put(100, rec.name, "", "PENDING", "BurstBufferStageIn")  # requeued
    world.clock.now += 2
    world.sm.reconcile()
    assert world.slurm.cancelled == [(100, "SIGKILL"), (100, "SIGKILL")]


def test_id_of_a_lost_job_reused_by_another_job_is_not_followed(world):
    """Seen on the mini-cluster: Slurm gives the id of a job it lost to the next
    submission. The service must not take that job for its own: not report its state,
    and above all not cancel it on release (it may be another user's)."""
    rec = running_service(world)
    world.slurm.put(100, "bob_job", "", "RUNNING")  # lost, then the id reused
    world.sm.reconcile()
    assert "its job id now names another job" in world.status()["detail"]
    release(world, rec)
    assert world.slurm.cancelled == []


def test_step_job_id_reused_by_another_job_is_not_followed(env):
    """The same for steps: an abort must not cancel the job that got a lost job's id."""
    from tests.conftest import STEP_BODY as BODY
    from tests.fake_slurm import FakeServices, FakeSlurm
    from wfm_orchestrator.slurm import JobState

    _, make = env
    slurm, services = FakeSlurm(cancel_ends_jobs=True), FakeServices()
    services.usable()
    m = make(slurm, services)
    m.launch(dict(BODY))
    m.reconcile()
    first = min(slurm.specs)
    slurm.set_state(first, "RUNNING")
    m.reconcile()
    # slurmctld lost every job of the step and gave the first id to bob's job.
    slurm.jobs_by_id = {first: JobState(first, "bob_job", "", "RUNNING", "", ("cn1",), None, "bob")}
    m.reconcile()
    m.abort(BODY["name"])
    m.reconcile()
    assert first not in slurm.cancelled_ids


def test_job_requeued_after_its_teardown_is_cancelled(world):
    """Found on the mini-cluster: released, cancelled, torn down (reservation deleted by
    the plugin), then slurmctld killed: Slurm recovers the job from its older saved state
    and requeues it; its setup fails (reservation missing) and the job stays held in the
    queue forever. The orchestrator follows a released service's job until it ends."""
    rec = running_service(world)
    release(world, rec)
    world.rm.release(rec.name)  # the plugin's teardown
    assert world.status()["status"] == "STOPPED"
    world.slurm.put(100, rec.name, "", "PENDING", "BurstBufferOperation")  # requeued, held
    world.clock.now += 2
    world.sm.reconcile()
    assert world.slurm.cancelled == [(100, "SIGKILL"), (100, "SIGKILL")]
    world.slurm.put(100, rec.name, "", "CANCELLED")
    world.sm.reconcile()
    world.clock.now += 200
    world.sm.reconcile()
    assert len(world.slurm.cancelled) == 2 and world.sm.job(rec.name).state == "CANCELLED"


def test_ended_job_that_comes_back_after_release_is_cancelled(world):
    """Found on the mini-cluster: the job had ended (CANCELLED) and the service was STOPPED
    when a slurmctld kill made Slurm recover the job from a state saved before the cancel
    (RUNNING again, on resources already given back). It is cancelled again."""
    rec = running_service(world)
    release(world, rec)
    world.rm.release(rec.name)  # the plugin's teardown
    world.slurm.put(100, rec.name, "", "CANCELLED")
    world.sm.reconcile()
    assert world.sm.job(rec.name).state == "CANCELLED"
    world.slurm.put(100, rec.name, "", "PENDING", "BurstBufferResources")  # back again
    world.clock.now += 5
    world.sm.reconcile()
    assert world.slurm.cancelled == [(100, "SIGKILL"), (100, "SIGKILL")]
