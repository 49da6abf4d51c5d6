"""A bound service job Slurm keeps PENDING is replaced after stuck_job_timeout (#19 item 2).

The world's fake Slurm plays the wedge seen on the mini-cluster (a slurmctld restart
during setup that loses the job's burst-buffer state): the plugin bound the reservation
(its setup ran) and the job stays PENDING. Each test states one rule of
``ServiceManager._replace`` (services.py) or ``ResourceManager.unbind``.
"""

from __future__ import annotations

import logging

import pytest

from tests.conftest import SBB, SERVICE_CONF
from wfm_orchestrator import services
from wfm_orchestrator.binding import Binding
from wfm_orchestrator.config import adopt
from wfm_orchestrator.errors import Forbidden, NotFound
from wfm_orchestrator.model import ReservationState as RS
from wfm_orchestrator.service_job import job_tag

from .conftest import ACCOUNTS

NAME = SBB["name"]
ALICE = ACCOUNTS["alice"]
TIMEOUT = 600.0  # the default stuck_job_timeout


def binding(world) -> Binding:
    return Binding(world.rm, world.sm, world.rm.accounts)


def bound_pending(world) -> None:
    """alice's SBB: job 100 submitted, bound by the plugin's setup, still PENDING."""
    world.reserve()
    world.sm.reconcile()
    binding(world).bind(NAME, 100, ALICE)[1].wait()
    world.sm.reconcile()


def replaced(world) -> None:
    """Past the timeout, one cycle: job 100 replaced."""
    world.clock.now += TIMEOUT
    world.sm.reconcile()


def test_a_bound_job_kept_pending_is_replaced_after_the_timeout_and_not_before(world):
    """PENDING 599 s after its binding: kept; at 600 s: unbound, cancelled, replaced."""
    bound_pending(world)
    world.clock.now += TIMEOUT - 1
    world.sm.reconcile()
    assert world.slurm.cancelled == [] and world.rm.get(NAME).bound_job == 100
    world.clock.now += 1
    world.sm.reconcile()
    rec, job = world.rm.get(NAME), world.sm.job(NAME)
    assert rec.state == RS.FREE and rec.bound_job is None
    assert world.rm.resources("dn1")["free_cores"] == 6  # the placement is kept
    assert world.slurm.cancelled == [(100, "SIGKILL")]
    assert (job.job_id, job.replaced_job, job.replacements) == (None, 100, 1)
    world.sm.reconcile()  # the next cycle submits the new job, with a fresh tag
    [first, second] = [spec for spec, _, _ in world.slurm.submitted]
    assert world.sm.job(NAME).job_id == 101
    assert second.comment == world.sm.job(NAME).tag != first.comment
    assert list(second.nodes) == list(first.nodes) == ["dn1"]
    world.slurm.set_state(100, "CANCELLED")
    world.sm.reconcile()
    assert world.sm.job(NAME).replaced_job is None  # done: nothing left to cancel
    assert world.slurm.cancelled == [(100, "SIGKILL")]  # once


def test_the_new_job_binds_and_the_old_one_neither_binds_nor_tears_down(world):
    """Old job 100: its setup is refused (not the service job), its teardown frees
    nothing (it bound nothing); the new job 101 binds and runs: ALLOCATED."""
    bound_pending(world)
    replaced(world)
    b = binding(world)
    with pytest.raises(Forbidden) as e:  # before the new job is recorded: Slurm is asked
        b.bind(NAME, 100, ALICE)
    assert e.value.field == "job_id"
    with pytest.raises(Forbidden) as e:
        b.unbind(NAME, 100)
    assert e.value.field == "job_id" and "nothing was released" in e.value.message
    world.sm.reconcile()
    with pytest.raises(Forbidden) as e:
        b.bind(NAME, 100, ALICE)
    assert "(job 101)" in e.value.message
    b.bind(NAME, 101, ALICE)[1].wait()
    with pytest.raises(Forbidden):
        b.unbind(NAME, 100)
    assert world.rm.get(NAME).bound_job == 101
    world.slurm.set_state(101, "RUNNING", nodes=("dn1",))
    world.sm.reconcile()
    st = world.status()
    assert st["status"] == "ALLOCATED" and st["detail"].startswith("Slurm job 101 running")
    b.unbind(NAME, 101).wait()  # the new job's own teardown frees it
    assert world.rm.get(NAME).state == RS.RELEASED


def test_the_status_says_it_while_the_service_lives_and_the_log_once(world, caplog):
    bound_pending(world)
    caplog.set_level(logging.INFO, logger="wfm_orchestrator")
    replaced(world)
    world.sm.reconcile()
    world.sm.reconcile()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    words = ("Slurm job 100 stayed PENDING 600 s after its burst buffer was set up on dn1 "
             "(stuck_job_timeout 600 s): cancelled and replaced by a new job, the "
             "reservation kept")
    assert warnings == [f"service {NAME}: {words} (replacement 1)"]
    assert f"reservation {NAME} unbound from job 100" in caplog.text
    st = world.status()
    assert st["status"] == "STAGINGIN"
    assert st["detail"] == f"Slurm job 101 pending: Resources [recovered 1 time: {words}]"
    world.restart()  # stored
    assert world.status()["detail"].endswith(f"[recovered 1 time: {words}]")
    world.release()
    world.rm.release(NAME)
    assert "recovered" not in world.status()["detail"]  # STOPPED says how it ended


def test_each_replacement_is_counted(world):
    """Twice stuck: two replacements, the callback (metrics) called for each."""
    calls = []
    world.sm.on_replaced = lambda: calls.append(1)
    bound_pending(world)
    replaced(world)
    world.slurm.set_state(100, "CANCELLED")
    world.sm.reconcile()
    binding(world).bind(NAME, 101, ALICE)[1].wait()
    world.sm.reconcile()
    replaced(world)
    assert world.slurm.cancelled_ids == [100, 101] and len(calls) == 2
    assert world.sm.job(NAME).replacements == 2
    assert "[recovered 2 times: Slurm job 101 stayed PENDING" in world.status()["detail"]


def test_an_unbound_pending_job_is_never_replaced(world):
    """FREE: Slurm has not set up its burst buffer, the job waits for its turn."""
    world.reserve()
    world.sm.reconcile()
    world.clock.now += 100 * TIMEOUT
    world.sm.reconcile()
    assert world.slurm.cancelled == [] and len(world.slurm.submitted) == 1


def test_a_released_service_is_cancelled_not_replaced(world):
    bound_pending(world)
    world.release()
    replaced(world)
    world.sm.reconcile()
    # The release's cancel, repeated after release_timeout (100 s): no replacement.
    assert set(world.slurm.cancelled_ids) == {100} and len(world.slurm.submitted) == 1
    assert world.sm.job(NAME).replacements == 0 and world.rm.get(NAME).bound_job == 100


@pytest.mark.parametrize("reason", ["JobHeldAdmin", "JobHeldUser"])
def test_a_job_a_person_holds_is_not_replaced(world, reason):
    bound_pending(world)
    world.slurm.put(100, NAME, world.sm.job(NAME).tag, "PENDING", reason, nodes=())
    world.clock.now += 100 * TIMEOUT
    world.sm.reconcile()
    assert world.slurm.cancelled == [] and world.rm.get(NAME).bound_job == 100


def test_the_clock_counts_from_the_binding_or_the_requeue_not_from_reasons(world):
    """A reason that changes does not restart it; a job requeued after it ran counts
    from when it was seen PENDING again."""
    bound_pending(world)
    world.clock.now += TIMEOUT / 2
    world.slurm.put(100, NAME, world.sm.job(NAME).tag, "PENDING", "BurstBufferStageIn",
                    nodes=())
    world.sm.reconcile()
    world.clock.now += TIMEOUT / 2
    world.sm.reconcile()
    assert world.slurm.cancelled_ids == [100]  # 600 s after the binding

    world.slurm.set_state(100, "CANCELLED")
    world.sm.reconcile()
    world.sm.reconcile()  # job 101
    binding(world).bind(NAME, 101, ALICE)[1].wait()
    world.slurm.set_state(101, "RUNNING", nodes=("dn1",))
    world.sm.reconcile()
    world.clock.now += 3 * TIMEOUT  # ran a long while, then Slurm requeued it
    world.slurm.put(101, NAME, world.sm.job(NAME).tag, "PENDING", "BeginTime", nodes=())
    world.sm.reconcile()
    world.clock.now += TIMEOUT - 1
    world.sm.reconcile()
    assert world.slurm.cancelled_ids == [100]
    world.clock.now += 1
    world.sm.reconcile()
    assert world.slurm.cancelled_ids == [100, 101]


def test_zero_disables_it_and_a_reload_sets_it(world, make_config):
    bound_pending(world)
    adopt(world.config, make_config(SERVICE_CONF + "stuck_job_timeout = 0\n"))
    world.clock.now += 100 * TIMEOUT
    world.sm.reconcile()
    assert world.slurm.cancelled == []
    adopt(world.config, make_config(SERVICE_CONF + "stuck_job_timeout = 10\n"))
    world.sm.reconcile()
    assert world.slurm.cancelled_ids == [100]
    assert "(stuck_job_timeout 10 s)" in world.status()["detail"]


def test_a_release_during_the_replacement_still_cancels_the_old_job(world):
    """Released between the unbind and the new submission: nothing is submitted, the
    old job is cancelled (again, after release_timeout) until Slurm ended it."""
    bound_pending(world)
    replaced(world)
    world.release()
    assert world.status()["status"] == "STOPPED"
    world.clock.now += 101  # release_timeout 100
    world.sm.reconcile()
    assert len(world.slurm.submitted) == 1
    assert world.slurm.cancelled_ids == [100, 100]
    assert world.sm.forget_released() == []  # still followed
    world.slurm.set_state(100, "CANCELLED")
    world.sm.reconcile()
    assert world.sm.job(NAME).replaced_job is None
    world.sm.reconcile()
    assert len(world.slurm.submitted) == 1


# --- crash safety: a crash at each step, then a restart finishes the replacement -------

class Crash(Exception):
    """Stands for the process dying at a fault point (not a WfmError: nothing catches it)."""


POINTS = ["service_replace_recorded", "service_replace_unbound", "service_replace_cancelled"]


def crash_at(world, monkeypatch, point: str) -> None:
    """One cycle that dies at fault ``point``, then a restart on the same database."""
    def fault(name):
        if name == point:
            raise Crash(name)

    monkeypatch.setattr(services, "fault", fault)
    with pytest.raises(Crash):
        world.sm.reconcile()
    monkeypatch.setattr(services, "fault", lambda name: None)
    world.restart()


@pytest.mark.parametrize("point", POINTS)
def test_a_crash_at_each_step_is_finished_after_the_restart(world, monkeypatch, point):
    """Whatever step the crash cut, the restart unbinds, cancels job 100 and submits one
    new job, which binds; the old job's teardown frees nothing."""
    bound_pending(world)
    world.clock.now += TIMEOUT
    crash_at(world, monkeypatch, point)
    assert world.sm.job(NAME).replaced_job == 100  # the intent was durable
    world.sm.reconcile()
    world.sm.reconcile()
    assert world.rm.get(NAME).state == RS.FREE
    assert set(world.slurm.cancelled_ids) == {100}
    assert [s.comment for s, _, _ in world.slurm.submitted][1:] == [world.sm.job(NAME).tag]
    b = binding(world)
    with pytest.raises(Forbidden):
        b.unbind(NAME, 100)
    b.bind(NAME, 101, ALICE)[1].wait()
    world.slurm.set_state(100, "CANCELLED")
    world.sm.reconcile()
    assert world.sm.job(NAME).replaced_job is None
    assert world.rm.get(NAME).bound_job == 101 and world.sm.job(NAME).replacements == 1


def test_a_crash_after_the_new_submission_adopts_the_new_job(world, monkeypatch):
    """service_after_submit on the new job: adopted by its new tag, never submitted twice."""
    bound_pending(world)
    replaced(world)
    crash_at(world, monkeypatch, "service_after_submit")
    world.sm.reconcile()
    assert world.sm.job(NAME).job_id == 101 and len(world.slurm.submitted) == 2


def test_an_id_slurm_gave_to_another_job_is_not_cancelled(world, monkeypatch):
    """A crash before the cancel; meanwhile Slurm lost job 100 and gave its id to bob's
    job: after the restart that job is not cancelled, the replacement goes on."""
    bound_pending(world)
    world.clock.now += TIMEOUT
    crash_at(world, monkeypatch, "service_replace_unbound")
    world.slurm.put(100, "bobs", "", "PENDING", user="bob", partition="data")
    world.sm.reconcile()
    assert world.slurm.cancelled == [] and world.sm.job(NAME).replaced_job is None
    assert world.sm.job(NAME).job_id == 101


# --- ResourceManager.unbind --------------------------------------------------------

def test_unbind_frees_the_binding_not_the_resources_and_is_durable(world):
    bound_pending(world)
    before = world.rm.resources("dn1")
    world.rm.unbind(NAME, 100).wait()
    world.restart()
    rec = world.rm.get(NAME)
    assert (rec.state, rec.bound_job) == (RS.FREE, None)
    assert world.rm.resources("dn1") == before
    world.rm.unbind(NAME, 100).wait()  # again: nothing to do (a restart finishing it)
    assert world.rm.get(NAME).state == RS.FREE


def test_unbind_refuses_a_reservation_another_job_bound(world):
    bound_pending(world)
    with pytest.raises(Forbidden) as e:
        world.rm.unbind(NAME, 99)
    assert e.value.field == "job_id" and "bound by job 100, not by job 99" in e.value.message
    assert world.rm.get(NAME).bound_job == 100
    world.rm.release(NAME)
    with pytest.raises(NotFound):
        world.rm.unbind(NAME, 100)


def test_rows_stored_before_count_their_last_change(world):
    """Migration 9: a row without state_since counts from its last change (updated)."""
    bound_pending(world)
    world.store.write([("UPDATE service_job SET state_since = NULL, updated = ?",
                        (world.clock.now - TIMEOUT,))]).wait()
    world.restart()
    assert world.sm.job(NAME).pending_since == world.clock.now - TIMEOUT
    assert job_tag(NAME, 1) in world.sm.job(NAME).tag
