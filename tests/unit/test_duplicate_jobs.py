"""Never two Slurm jobs for one reservation (issue #20 item 2): the leader cancels a second
job carrying a reservation's tag (ServiceManager._cancel_duplicates, docs/ha.md "Slurm
submissions"), never its recorded job, a look-alike, nor its own submission in flight.

The second job is made as a former leader paused past its lease makes it: the record's
tag, the reservation's user, the datanode partition, submitted behind the back of the
orchestrator that recorded another job.
"""

from __future__ import annotations

import logging

from tests.conftest import SBB
from wfm_orchestrator.binding import Binding
from wfm_orchestrator.errors import SlurmUnavailable
from wfm_orchestrator.service_job import job_tag

from .conftest import ACCOUNTS

NAME = SBB["name"]
RELEASE_TIMEOUT = 100  # SERVICE_CONF's: the interval between two cancels of one job


def submitted(world) -> int:
    """alice's SBB reserved and its job submitted by a follower cycle: the job's id."""
    world.reserve()
    world.sm.reconcile()
    job = world.sm.job(NAME)
    assert job.job_id is not None
    return job.job_id


def second_job(world, job_id: int = 555, state: str = "PENDING", *, tag: str | None = None,
               user: str = "alice", partition: str = "data") -> None:
    """A job carrying the service's tag (its record's, unless ``tag``) appears in Slurm."""
    world.slurm.put(job_id, NAME, world.sm.job(NAME).tag if tag is None else tag, state,
                    user=user, partition=partition)


def test_a_second_job_with_the_tag_is_cancelled_and_the_recorded_one_kept(world, caplog):
    recorded = submitted(world)
    second_job(world, 555)
    with caplog.at_level(logging.WARNING, logger="wfm_orchestrator.services"):
        world.sm.reconcile()
    assert world.slurm.cancelled == [(555, "SIGKILL")]  # as a release cancels
    assert world.sm.job(NAME).job_id == recorded
    [line] = [r.getMessage() for r in caplog.records if "555" in r.getMessage()]
    assert f"service {NAME}: cancelling Slurm job 555 (PENDING)" in line
    assert f"not its recorded job {recorded}" in line and "former leader" in line


def test_the_cancel_of_a_second_job_is_sent_again_only_after_release_timeout(world):
    submitted(world)
    second_job(world, 555, "RUNNING")
    world.sm.reconcile()
    world.clock.now += RELEASE_TIMEOUT - 1
    world.sm.reconcile()
    assert world.slurm.cancelled_ids == [555]
    world.clock.now += 1
    world.sm.reconcile()
    assert world.slurm.cancelled_ids == [555, 555]  # it did not take: again
    world.slurm.set_state(555, "CANCELLED")
    world.clock.now += RELEASE_TIMEOUT
    world.sm.reconcile()
    assert world.slurm.cancelled_ids == [555, 555]  # ended: left alone


def test_the_recorded_job_alone_is_never_cancelled(world):
    submitted(world)
    for state in ("PENDING", "RUNNING"):
        world.slurm.set_state(100, state)
        world.clock.now += RELEASE_TIMEOUT
        world.sm.reconcile()
    assert world.slurm.cancelled == [] and world.sm.job(NAME).job_id == 100


def test_a_takeover_cancels_a_second_job_the_former_leader_left(world):
    """The record (job 100) was committed by the former leader; the new one loads it."""
    submitted(world)
    second_job(world, 555, "RUNNING")
    world.restart()
    world.sm.reconcile()
    assert world.slurm.cancelled_ids == [555] and world.sm.job(NAME).job_id == 100
    assert len(world.slurm.submitted) == 1


def test_a_second_job_with_an_older_nonce_of_the_same_reservation_is_cancelled(world):
    """Submitted with the record's nonce before a replacement gave the record a new one."""
    submitted(world)
    job = world.sm.job(NAME)
    second_job(world, 555, tag=job_tag(NAME, job.seq, "0123456789abcdef"))
    world.sm.reconcile()
    assert world.slurm.cancelled_ids == [555]


def test_jobs_that_are_not_ours_are_left_alone(world, caplog):
    """A look-alike of another user or partition, a job without the tag, another
    reservation's tag or seq, an ended job: none is cancelled, the recorded job is kept."""
    submitted(world)
    job = world.sm.job(NAME)
    second_job(world, 551, user="mallory")
    second_job(world, 552, partition="compute")
    second_job(world, 553, tag="")
    second_job(world, 554, tag=job_tag("bob_s_sbb", job.seq, job.nonce))
    second_job(world, 555, tag=job_tag(NAME, job.seq + 1, job.nonce))
    second_job(world, 556, "CANCELLED")
    world.slurm.put(557, "other_name", job.tag, "PENDING", partition="data")
    world.sm.reconcile()
    assert world.slurm.cancelled == []
    assert world.sm.job(NAME).job_id == 100


def test_the_job_the_reservation_is_bound_to_is_never_cancelled(world):
    """Whatever the record says, a bound job holds the service: never cancelled as a
    second one (its teardown would free the reservation). The record is set by hand to
    another job of the tag: no path of the code leaves them apart any more."""
    world.reserve()
    second_job(world, 555, "RUNNING")
    Binding(world.rm, world.sm, world.rm.accounts).bind(NAME, 555, ACCOUNTS["alice"])[1].wait()
    assert world.rm.get(NAME).bound_job == 555  # adopted by the binding (confirm_job)
    second_job(world, 100)
    world.sm._update(world.sm.job(NAME), job_id=100)
    world.sm.reconcile()
    assert world.slurm.cancelled == []


def test_a_leader_that_cannot_prove_it_still_leads_cancels_nothing(world, caplog):
    """With a leader lease, the cancel waits for the submission's proof (the record
    durable under the lease, time left on it): a deposed leader that has not noticed yet
    cancels nothing; once the proof holds, the second job is cancelled."""
    submitted(world)
    second_job(world, 555)
    proofs = []

    def deposed():
        proofs.append("asked")
        raise SlurmUnavailable("not submitted: the job's record is not surely durable under "
                               "this orchestrator's lease (lease lost)")

    world.sm.still_leading = deposed
    with caplog.at_level(logging.WARNING, logger="wfm_orchestrator.services"):
        world.sm.reconcile()
    assert world.slurm.cancelled == [] and proofs == ["asked"]
    assert f"service {NAME}: second Slurm job(s) 555 not cancelled now" in caplog.text
    world.sm.still_leading = lambda: proofs.append("proved")
    world.sm.reconcile()
    assert world.slurm.cancelled_ids == [555] and proofs == ["asked", "proved"]
    world.sm.reconcile()  # nothing due (the cancel was just sent): no proof asked
    assert proofs == ["asked", "proved"]


# --- the leader's own submission ---------------------------------------------------


def test_a_submission_whose_answer_was_lost_is_adopted_not_cancelled(world):
    """slurmrestd created the job but its answer never came (a timeout): the record has no
    id, the next cycle finds the job by its tag and adopts it; nothing cancelled, nothing
    submitted again."""
    submit = world.slurm.submit

    def lost_answer(spec, user, user_token=None):
        submit(spec, user, user_token)
        raise SlurmUnavailable("read timed out")

    world.slurm.submit = lost_answer
    world.reserve()
    world.sm.reconcile()
    assert world.sm.job(NAME).job_id is None
    world.slurm.submit = submit
    world.sm.reconcile()
    assert world.sm.job(NAME).job_id == 100
    assert world.slurm.cancelled == [] and len(world.slurm.submitted) == 1


def test_a_submission_in_flight_is_not_cancelled(world):
    """The former leader's job appears while this leader's submission is in flight: the
    cycle's job list was read before both, so nothing is cancelled in it; the next cycle
    has the id Slurm returned recorded, keeps it and cancels the other."""
    submit = world.slurm.submit

    def meanwhile(spec, user, user_token=None):
        second_job(world, 555)  # the paused former leader's POST lands first
        return submit(spec, user, user_token)

    world.slurm.submit = meanwhile
    world.reserve()
    world.sm.reconcile()
    assert world.slurm.cancelled == []
    ours = world.sm.job(NAME).job_id
    assert ours is not None and ours != 555
    world.sm.reconcile()
    assert world.slurm.cancelled_ids == [555] and world.sm.job(NAME).job_id == ours


def test_a_job_the_plugin_bound_during_our_submission_is_kept(world, caplog):
    """The former leader's job starts and the plugin binds it (adopted: it carries the
    tag) while our submission is in flight: the bound job stays the service's, ours
    becomes the second job and is cancelled once its id is known."""
    submit = world.slurm.submit
    binding = Binding(world.rm, world.sm, world.rm.accounts)

    def meanwhile(spec, user, user_token=None):
        second_job(world, 555, "RUNNING")
        binding.bind(NAME, 555, ACCOUNTS["alice"])[1].wait()
        return submit(spec, user, user_token)

    world.slurm.submit = meanwhile
    world.reserve()
    with caplog.at_level(logging.WARNING, logger="wfm_orchestrator.services"):
        world.sm.reconcile()
    assert world.sm.job(NAME).job_id == 555 and world.rm.get(NAME).bound_job == 555
    assert "Slurm job 555 was adopted while job 100 was being submitted" in caplog.text
    world.sm.reconcile()
    assert world.slurm.cancelled_ids == [100]  # ours, no longer in flight
    assert world.sm.job(NAME).job_id == 555 and world.rm.get(NAME).bound_job == 555
