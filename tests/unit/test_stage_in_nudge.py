"""Slurm 22.05 leaves a job PENDING after its burst-buffer stage-in (stage_in_nudge.py)."""

from __future__ import annotations

import logging

from wfm_orchestrator.errors import SlurmUnavailable
from wfm_orchestrator.follower import JobIndex
from wfm_orchestrator.slurm import JobState
from wfm_orchestrator.stage_in_nudge import STAGED_IN, StageInNudge


class FakeSlurm:
    def __init__(self, schedules: bool = False, fail: bool = False):
        self.schedules_after_stage_in = schedules
        self.fail = fail
        self.touched: list[tuple[int, str]] = []

    def touch(self, job_id: int, comment: str) -> bool:
        if self.fail:
            raise SlurmUnavailable("slurmrestd down")
        self.touched.append((job_id, comment))
        return True


def job(job_id: int, bb: str = STAGED_IN, state: str = "PENDING") -> JobState:
    return JobState(job_id=job_id, name=f"j{job_id}", comment=f"wfm:{job_id}", state=state,
                    reason="BurstBufferStageIn", nodes=(), exit_code=None, user="alice",
                    burst_buffer_state=bb)


def nudge(slurm: FakeSlurm) -> tuple[StageInNudge, list[float]]:
    now = [100.0]
    return StageInNudge(slurm, after=4.0, clock=lambda: now[0]), now


def test_a_job_staged_in_and_pending_for_a_while_is_updated_once_with_its_own_comment():
    slurm = FakeSlurm()
    n, now = nudge(slurm)
    jobs = JobIndex.of([job(7), job(8, bb="staging-in"), job(9, state="RUNNING")])
    n(jobs)
    now[0] += 3.9
    n(jobs)
    assert slurm.touched == [], "not before `after` seconds"
    now[0] += 0.2
    n(jobs)
    assert slurm.touched == [(7, "wfm:7")]
    now[0] += 60
    n(jobs)
    assert slurm.touched == [(7, "wfm:7")], "each job once: still pending, it waits for " \
        "something else"


def test_one_update_serves_every_job_due_at_once_and_a_later_one_gets_its_own():
    slurm = FakeSlurm()
    n, now = nudge(slurm)
    n(JobIndex.of([job(7), job(8)]))
    now[0] += 5
    n(JobIndex.of([job(7), job(8)]))
    assert slurm.touched == [(7, "wfm:7")]
    n(JobIndex.of([job(7), job(8), job(9)]))
    now[0] += 5
    n(JobIndex.of([job(7), job(8), job(9)]))
    assert slurm.touched == [(7, "wfm:7"), (9, "wfm:9")]


def test_a_slurm_that_schedules_after_stage_in_is_left_alone():
    slurm = FakeSlurm(schedules=True)
    n, now = nudge(slurm)
    n(JobIndex.of([job(7)]))
    now[0] += 10
    n(JobIndex.of([job(7)]))
    assert slurm.touched == []


def test_a_failed_update_is_logged_and_never_raised(caplog):
    slurm = FakeSlurm(fail=True)
    n, now = nudge(slurm)
    n(JobIndex.of([job(7)]))
    now[0] += 5
    with caplog.at_level(logging.WARNING, "wfm_orchestrator.stage_in_nudge"):
        n(JobIndex.of([job(7)]))
    assert "could not ask Slurm to schedule job 7" in caplog.text
