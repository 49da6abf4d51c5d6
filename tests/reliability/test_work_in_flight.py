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
Slurm job carries its tag (``wfm-orchestrator:service:<name>:<seq>:<nonce>``), the
stored job id is that job's (adopted, in the second case, not submitted
again), and after release it is STOPPED with its job ended and every
resource free.

Steps the same way (src/wfm_orchestrator/steps.py): ``step_before_submit``
(the launch acknowledged, no job submitted) and ``step_after_submit`` (the
first job -- the stage-in mover -- accepted by Slurm, its id not stored). A
step with a stage-in mover, its job and a stage-out mover must complete
with exactly one Slurm job per part (tag ``wfm-orchestrator:step:<launch
id>:<part>``), the mover submitted before the crash adopted, and its output
moved back to the HDD tier.

Scale: ``WFM_RELIABILITY_FAULT_HITS`` hits per fault point (default 2, CI);
20 on demand.
"""

from __future__ import annotations

import os
import pwd
import time
import uuid

import pytest

from tests.conftest import connect_db
from tests.integration.minicluster import user_tier_dir, user_token
from tests.poll import poll_until
from wfm_orchestrator.service_job import job_tag

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


def stored_job(state_db: str, name: str) -> tuple[int | None, str]:
    """The stored job id of a service and the tag its record gives its job."""
    conn = connect_db(state_db)
    try:
        row = conn.execute("SELECT job_id, seq, nonce FROM service_job WHERE name = ?",
                           (name,)).fetchone()
    finally:
        conn.close()
    assert row is not None, f"no service_job row for {name}"
    return row[0], job_tag(name, row[1], row[2])


@pytest.mark.parametrize("point", ["service_before_submit", "service_after_submit"])
def test_service_job_submitted_exactly_once_across_a_crash(orchestrator, client, created,
                                                            point):
    """Killed before the submit / after it but before storing the id: one job, no orphan."""
    started = time.monotonic()
    acked = adopted = 0
    try:
        for hit in range(1, HITS + 1):
            name = unique("crash")
            created["services"].append(name)
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
            job_id, tag = stored_job(orchestrator.state_db, name)
            assert jobs[0].job_id == job_id, (
                f"hit {hit}: the stored job id {job_id} is not the tagged job {jobs[0].job_id}")
            assert jobs[0].comment == tag
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


# --- steps -------------------------------------------------------------------------

STEP_TAG = "wfm-orchestrator:step:"
NVME = "/var/tmp/wfm-tiers/nvme"  # noqa: S108 - the mini-cluster's tier roots
HDD = "/var/tmp/wfm-tiers/hdd"  # noqa: S108
STEP_FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
              "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


# service: an ALLOCATED SBB service of alice for the module (conftest.py).


def step_body(step: str, svc: str, area: str) -> dict:
    """stage-in mover (HDD -> NVMe), the step's job, stage-out mover (NVMe -> HDD)."""
    return {
        "name": step, "user": "alice", "location": ["loc1"],
        "command": f"sbatch -N 1 -n 1 --mem 100M -t 5 -o /tmp/{step}.out "
                   f"--wrap 'cp {NVME}/alice/{area}/in.dat {NVME}/alice/{area}/out.dat'",
        "services": [{"name": svc, "hint": "RW", "datamovers": [
            {"name": "dm_in", "trigger": "step_start", "target": "NVMe", "operation": "copy",
             "elements": [f"HDD:{area}/in.dat"]},
            {"name": "dm_out", "trigger": "step_stop", "target": "HDD", "operation": "move",
             "elements": [f"NVMe:{area}/*"]},
        ]}],
    }


def step_launch_id(state_db: str, step: str) -> str:
    conn = connect_db(state_db)
    try:
        row = conn.execute("SELECT launch_id FROM step WHERE name = ?", (step,)).fetchone()
    finally:
        conn.close()
    assert row is not None, f"no step row for {step}"
    return row[0]


def wait_step(orch, step: str, timeout: float = 180.0) -> dict:
    """The step's status once it is final; fails with the last one and the log."""
    seen: list[dict | None] = [None]

    def final() -> dict | None:
        code, seen[0] = orch.get(f"/step/status/{step}")
        assert code == 200, seen[0]
        return seen[0] if seen[0]["status"] in STEP_FINAL else None

    return poll_until(final, f"step {step}: final", timeout, 0.5,
                      last=lambda: f"{seen[0]}\n{orch.log()[-3000:]}")


@pytest.mark.parametrize("point", ["step_before_submit", "step_after_submit"])
def test_step_jobs_submitted_exactly_once_across_a_crash(orchestrator, client, service, created,
                                                         point):
    """Killed before a step's first job is submitted / after, before its id is stored:
    the step completes with one job per part (mover in, job, mover out), none twice."""
    alice = pwd.getpwnam("alice")
    started = time.monotonic()
    acked = adopted = 0
    try:
        for hit in range(1, HITS + 1):
            step = unique("crashstep")
            created["steps"].append(step)
            area = uuid.uuid4().hex[:10]
            hdd = f"{user_tier_dir(HDD, 'alice')}/{area}"  # elements are relative to it
            os.makedirs(hdd)
            os.chown(hdd, alice.pw_uid, alice.pw_gid)
            with open(f"{hdd}/in.dat", "w") as fh:
                fh.write("input\n" * 100)
            os.chown(f"{hdd}/in.dat", alice.pw_uid, alice.pw_gid)
            body = step_body(step, service, area)
            restart(orchestrator, fault=point)
            try:
                code, answer = orchestrator.post("/step/launch", body)
                assert code == 200, f"hit {hit}: launch {step}: {code} {answer}"
                acked += 1
            except OSError:
                code = None
            assert wait_exit(orchestrator) == 137, orchestrator.log()[-3000:]
            log_before = len(orchestrator.log())
            launch(orchestrator)
            wait_answering(orchestrator)
            if code is None:
                code, answer = orchestrator.get(f"/step/status/{step}")
                if code != 200:
                    code, answer = orchestrator.post("/step/launch", body)
                    assert code == 200, f"hit {hit}: relaunch {step}: {code} {answer}"
            st = wait_step(orchestrator, step)
            assert st["status"] == "COMPLETED", f"hit {hit} ({point}): {st}"
            prefix = f"{STEP_TAG}{step_launch_id(orchestrator.state_db, step)}:"
            jobs = [j for j in client.jobs() if j.comment.startswith(prefix)]
            keys = sorted(j.comment[len(prefix):] for j in jobs)
            assert len(keys) == len(set(keys)) == 3, (
                f"hit {hit} ({point}): jobs of {step} by part: {keys} "
                f"{[(j.job_id, j.state) for j in jobs]}")
            assert not active(jobs), jobs
            assert os.path.exists(f"{hdd}/out.dat"), "the step's output did not arrive"
            if point == "step_after_submit":
                assert "adopting" in orchestrator.log()[log_before:], (
                    f"hit {hit}: the job submitted before the crash was not adopted")
                adopted += 1
    finally:
        if orchestrator.proc.poll() is not None:
            launch(orchestrator)
            wait_answering(orchestrator)
    figures(f"work in flight ({point})", fault_hits=HITS, launches_acknowledged_before_exit=acked,
            jobs_adopted=adopted, duplicate_jobs=0, orphan_jobs=0,
            seconds=f"{time.monotonic() - started:.0f}")
