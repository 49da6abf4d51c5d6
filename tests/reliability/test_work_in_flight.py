"""Work in flight: the orchestrator dies around a service job's submission (mini-cluster).

A reserved service's job is submitted by the service worker once the
reservation is FREE. The orchestrator is started with a fault point
(``WFM_FAULT``, src/wfm_orchestrator/services.py) that makes it exit at once
(``os._exit(137)``, as kill -9 would):

* ``service_before_submit``: the reservation is acknowledged (200) and
  durable, the job not yet submitted;
* ``service_after_submit``: Slurm accepted the job, its id is not stored.

After a normal restart the service must proceed exactly once: it reaches
ALLOCATED (its job runs and the burst-buffer plugin bound it), exactly one
Slurm job carries its tag (``wfm-orchestrator:service:<name>:<seq>``), the
stored job id is that job's (adopted, in the second case, not submitted
again), and after release it is STOPPED with its job ended and every
resource free.

Scale: ``WFM_RELIABILITY_FAULT_HITS`` hits per fault point (default 2, CI);
20 on demand.
"""

from __future__ import annotations

import sqlite3
import time

import pytest

from tests.integration.orchestrator import user_token

from .cluster import (
    active,
    launch,
    release,
    reserve_body,
    restart,
    tagged_jobs,
    unique,
    wait_all_free,
    wait_answering,
    wait_exit,
    wait_jobs_ended,
    wait_status,
)
from .harness import env_int, figures

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

HITS = env_int("WFM_RELIABILITY_FAULT_HITS", 2)


def stored_job(state_db: str, name: str) -> tuple[int | None, int]:
    conn = sqlite3.connect(state_db, timeout=30)
    try:
        row = conn.execute("SELECT job_id, seq FROM service_job WHERE name = ?",
                           (name,)).fetchone()
    finally:
        conn.close()
    assert row is not None, f"no service_job row for {name}"
    return row[0], row[1]


@pytest.mark.parametrize("point", ["service_before_submit", "service_after_submit"])
def test_service_job_submitted_exactly_once_across_a_crash(orchestrator, client, point):
    """Killed before the submit / after it but before storing the id: one job, no orphan."""
    started = time.monotonic()
    acked = adopted = 0
    try:
        for hit in range(1, HITS + 1):
            name = unique("crash")
            body = reserve_body(name, user_token("alice"))
            restart(orchestrator, fault=point)
            try:
                code, answer = orchestrator.post("/ephemeralservice/reserve", body)
                assert code == 200, f"hit {hit}: reserve {name}: {code} {answer}"
                acked += 1
            except OSError:
                code = None  # the fault point won the race with the answer: retried below
            assert wait_exit(orchestrator) == 137, orchestrator.log()[-3000:]
            log_before = len(orchestrator.log())
            launch(orchestrator)
            wait_answering(orchestrator)
            if code is None:
                code, answer = orchestrator.post("/ephemeralservice/reserve", body)
                assert code == 200, f"hit {hit}: retried reserve {name}: {code} {answer}"
            wait_status(orchestrator, name, "ALLOCATED")
            jobs = tagged_jobs(client, name)
            assert len(jobs) == 1, (
                f"hit {hit} ({point}): {len(jobs)} Slurm jobs carry the tag of {name}: "
                f"{[(j.job_id, j.state, j.comment) for j in jobs]}")
            job_id, seq = stored_job(orchestrator.state_db, name)
            assert jobs[0].job_id == job_id, (
                f"hit {hit}: the stored job id {job_id} is not the tagged job {jobs[0].job_id}")
            assert jobs[0].comment.endswith(f":{seq}")
            if point == "service_after_submit":
                assert f"adopting Slurm job {job_id}" in orchestrator.log()[log_before:], (
                    f"hit {hit}: job {job_id} was not adopted after the restart")
                adopted += 1
            release(orchestrator, name)
            wait_status(orchestrator, name, "STOPPED")
            jobs = wait_jobs_ended(client, name)
            assert len(jobs) == 1 and not active(jobs), jobs
        wait_all_free(orchestrator)
    finally:
        if orchestrator.proc.poll() is not None:
            launch(orchestrator)
            wait_answering(orchestrator)
    figures(f"work in flight ({point})", fault_hits=HITS, reserves_acknowledged_before_exit=acked,
            jobs_adopted=adopted, duplicate_jobs=0, orphan_jobs=0,
            seconds=f"{time.monotonic() - started:.0f}")
