"""Slurm faults under running services (mini-cluster, the orchestrator on 127.0.0.1:8080).

* slurmctld killed (SIGKILL) and brought back (``deploy/devcluster up``)
  while a service's job is being set up (just submitted: pending,
  stage-in, the plugin's ``slurm_bb_setup``): Slurm 22.05 tears the buffer
  down with ``hurry`` and sets it up again; the plugin keeps the
  reservation for a job that will be staged in again and re-binds from its
  cache (501 + cache = success). The service still reaches ALLOCATED with
  exactly one live job, then stops cleanly. slurmctld may also come back
  without the job (it answers a submission before saving its state): if
  the plugin had not bound the reservation yet the orchestrator submits
  the job again (it never started); if it had, the service is reported
  ended (GONE) and its resources freed after ``teardown_grace``. Killed
  inside ``slurm_bb_setup``, Slurm can also come back without the job's
  burst-buffer state and leave the job PENDING for ever (its node PLANNED):
  the orchestrator must keep reporting it truthfully (STAGEDIN, pending),
  and a release must cancel it and free everything.
* slurmctld killed and brought back while a released service is in
  teardown (its job has left RUNNING, the reservation is still held):
  teardown re-runs (a DELETE answered 502 counts as done), the service
  reaches STOPPED and its resources are freed exactly once. Slurm may
  requeue the job and run it again (the orchestrator cancels it again at
  once) or come back without it (the orchestrator frees the resources
  after ``teardown_grace``).
* slurmrestd stopped for ``WFM_RELIABILITY_RESTD_DOWN`` seconds (default
  30) while services run: the API keeps answering (status within 1 s, the
  status says Slurm is unreachable), a release and a new reserve are
  accepted meanwhile; once slurmrestd is back every status converges
  (released one STOPPED, running one ALLOCATED, new one started) and, after
  releasing all, every resource is free.

After each case the mini-cluster is UP and no resource is held.
Scale: ``WFM_RELIABILITY_SLURM_RESTARTS`` restarts during setup (default 1,
CI) and ``WFM_RELIABILITY_TEARDOWN_RESTARTS`` during teardown (default 1:
each may wait ``teardown_grace``, 60 s).
"""

# ruff: noqa: S311 - random test workloads and timings, not cryptography

from __future__ import annotations

import random
import re
import subprocess
import time

import pytest

from tests.integration.minicluster import user_token
from tests.poll import poll, poll_until

from .cluster import (
    active,
    devcluster_up,
    kill_daemon,
    release,
    reserve_body,
    skip_lost_job_ids,
    status,
    tagged_jobs,
    unique,
    wait_all_free,
    wait_jobs_ended,
    wait_status,
)
from .harness import env_int, figures

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

RESTARTS = env_int("WFM_RELIABILITY_SLURM_RESTARTS", 1)
# Each teardown case may wait teardown_grace (60 s): one in CI.
TEARDOWN_RESTARTS = env_int("WFM_RELIABILITY_TEARDOWN_RESTARTS", 1)
# A kill lands inside the teardown window (job ended, reservation not yet deleted)
# only when the timing allows: try more times until that many have. Four attempts
# missed the window in about one run of four on a loaded machine (session 4); a
# miss costs ~30 s, so eight keep a missed window rare without a long worst case.
TEARDOWN_ATTEMPTS = env_int("WFM_RELIABILITY_TEARDOWN_ATTEMPTS", TEARDOWN_RESTARTS + 7)
RESTD_DOWN = env_int("WFM_RELIABILITY_RESTD_DOWN", 30)


def scontrol_state(job_id: int) -> str:
    """The job's state straight from slurmctld ("" if it cannot tell)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True,
                         text=True, timeout=10)
    m = re.search(r"JobState=(\S+)", out.stdout)
    return m.group(1) if m else ""


def wait_job_id(orch, name: str, timeout: float = 60.0) -> int:
    """The service's Slurm job id, as soon as the orchestrator reports one."""
    seen: list[dict | None] = [None]

    def job_id() -> re.Match | None:
        seen[0] = status(orch, name)
        return re.search(r"Slurm job (\d+)", seen[0]["detail"])

    found = poll_until(job_id, f"service {name}: a Slurm job", timeout, 0.05,
                       last=lambda: seen[0])
    return int(found.group(1))


def access_lines(orch, name: str) -> list[str]:
    """'GET 200', 'DELETE 502', ... for the service's server/allocation calls."""
    return [f"{m.group(1)} {m.group(2)}" for m in re.finditer(
        rf" (GET|DELETE) /v2\.0\.0/server/allocation/{re.escape(name)} (\d{{3}}) ", orch.log())]


def no_orphans(client, names: list[str], timeout: float = 120.0) -> None:
    """No job of these services is active: a later slurmctld kill may bring an ended job
    back from an older saved state; the orchestrator must cancel it."""
    for name in names:
        wait_jobs_ended(client, name, timeout)


# The slowest normal outcome (a bound job lost, freed after teardown_grace) takes ~70 s.
WEDGED_AFTER = 180.0


def started_or_wedged(orch, client, name: str) -> dict | None:
    """ALLOCATED or STOPPED, as usual; None if Slurm wedged the job (see the module doc)."""
    st = wait_status(orch, name, ("ALLOCATED", "STOPPED"), WEDGED_AFTER, required=False)
    if st is not None and st["status"] in ("ALLOCATED", "STOPPED"):
        return st
    pending = [j for j in tagged_jobs(client, name) if j.state == "PENDING"]
    if (st is not None and st["status"] == "STAGEDIN" and "pending" in st["detail"]
            and len(pending) == 1 and "GET 200" in access_lines(orch, name)):
        return None
    pytest.fail(f"service {name}: expected ALLOCATED/STOPPED, still {st} after "
                f"{WEDGED_AFTER:g} s\n{orch.log()[-3000:]}")


def finish(orch, client, name: str) -> list:
    """Release, STOPPED, its one job ended; returns the tagged jobs."""
    release(orch, name)
    wait_status(orch, name, "STOPPED")
    jobs = wait_jobs_ended(client, name)
    assert len(jobs) == 1, f"{name}: {[(j.job_id, j.state) for j in jobs]}"
    return jobs


def test_slurmctld_restart_during_setup(orchestrator, client, created):
    """Killed while the service's job is being set up: one job, ALLOCATED, then clean stop."""
    started = time.monotonic()
    seen_states = []
    calls = []
    lost = lost_bound = wedged = 0
    highest = 0  # the highest job id seen: Slurm may hand lost ones out again
    rng = random.Random()
    try:
        for _ in range(RESTARTS):
            name = unique("ctldsetup")
            created["services"].append(name)
            code, answer = orchestrator.post("/ephemeralservice/reserve",
                                             reserve_body(name, user_token("alice")))
            assert code == 200, answer
            job_id = wait_job_id(orchestrator, name)
            highest = max(highest, job_id)
            # The first kill comes at once (the job just submitted), later ones at a random
            # moment of the next second (pending, stage-in, setup, starting).
            time.sleep(rng.uniform(0, 1.0) if seen_states else 0)
            seen_states.append(scontrol_state(job_id) or "?")
            kill_daemon("slurmctld")
            devcluster_up()
            st = started_or_wedged(orchestrator, client, name)
            if st is None:
                # Slurm keeps the bound job PENDING for ever: a release ends it cleanly.
                finish(orchestrator, client, name)
                wedged += 1
                calls.append(",".join(access_lines(orchestrator, name)) + " (wedged by Slurm)")
                continue
            if st["status"] == "STOPPED":
                # Slurm lost the job after the plugin bound the reservation: reported
                # (GONE) and freed after teardown_grace; nothing of it left in Slurm.
                assert "ended GONE" in st["detail"], st
                assert not tagged_jobs(client, name)
                lost_bound += 1
                calls.append(",".join(access_lines(orchestrator, name)) + " (lost, bound)")
                continue
            jobs = tagged_jobs(client, name)
            highest = max([highest, *(j.job_id for j in jobs)])
            assert len(jobs) == 1 and active(jobs), (
                f"{name}: {[(j.job_id, j.state, j.reason) for j in jobs]}")
            if jobs[0].job_id != job_id:
                # Slurm lost the job (submit answered before its state was saved):
                # the orchestrator submitted it again.
                assert f"Slurm lost job {job_id} before it started" in orchestrator.log()
                lost += 1
            finish(orchestrator, client, name)
            lines = access_lines(orchestrator, name)
            calls.append(",".join(lines))
            # Bound once, by one job: the same job's setup run again after the restart
            # gets its allocation again (a second 'GET 200') without a second binding.
            bindings = re.findall(rf"reservation {re.escape(name)} bound by ([^\n]+)",
                                  orchestrator.log())
            assert len(bindings) == 1, f"{name} bound {len(bindings)} times: {bindings}, {lines}"
            assert lines.count("DELETE 200") <= 1, lines
        wait_all_free(orchestrator)
        no_orphans(client, created["services"])
    finally:
        devcluster_up()
        skip_lost_job_ids(highest)
    figures("slurmctld restart during setup", restarts=RESTARTS,
            job_state_at_kill="/".join(seen_states), allocation_calls=" | ".join(calls),
            jobs_lost_by_slurm_and_submitted_again=lost,
            jobs_lost_by_slurm_after_binding_reported_stopped=lost_bound,
            jobs_left_pending_by_slurm_then_released=wedged,
            duplicate_jobs=0, leaked_resources=0,
            seconds=f"{time.monotonic() - started:.0f}")


def test_slurmctld_restart_during_teardown(orchestrator, client, created):
    """Killed while a released service's job tears down: STOPPED, freed once."""
    started = time.monotonic()
    hits = lost = stuck = repeated = attempts = 0
    highest = 0  # the highest job id seen: Slurm may hand lost ones out again
    calls = []
    try:
        while hits < TEARDOWN_RESTARTS and attempts < TEARDOWN_ATTEMPTS:
            attempts += 1
            name = unique("ctldteardown")
            created["services"].append(name)
            code, answer = orchestrator.post("/ephemeralservice/reserve",
                                             reserve_body(name, user_token("alice")))
            assert code == 200, answer
            wait_status(orchestrator, name, "ALLOCATED")
            job_id = wait_job_id(orchestrator, name)
            highest = max(highest, job_id)
            release(orchestrator, name)
            # The moment the job leaves RUNNING (Slurm's teardown), kill slurmctld; after a
            # minute, kill it anyway (the attempt then does not count as a hit).
            state = poll(lambda j=job_id: (s := scontrol_state(j)) not in ("RUNNING", "") and s,
                         60, 0.05) or "RUNNING"
            held = status(orchestrator, name)["status"] != "STOPPED"
            kill_daemon("slurmctld")
            hits += held and state not in ("RUNNING", "")
            devcluster_up()
            wait_status(orchestrator, name, "STOPPED", timeout=180)
            # Slurm may come back with the job RUNNING, the cancel lost: the orchestrator
            # repeats it after release_timeout (120 s).
            jobs = wait_jobs_ended(client, name, timeout=150)
            repeated += f"cancelling Slurm job {job_id} (release, again)" in orchestrator.log()
            # Slurm may come back without the job at all (not saved yet): then the
            # orchestrator frees the resources after teardown_grace.
            assert len(jobs) <= 1, jobs
            lost += not jobs
            stuck += sum(j.state == "STAGE_OUT" for j in jobs)
            lines = access_lines(orchestrator, name)
            calls.append(f"{state}: " + (",".join(lines) or "(job lost by Slurm)"))
            assert lines.count("DELETE 200") <= 1, lines
        wait_all_free(orchestrator)
        no_orphans(client, created["services"])
    finally:
        devcluster_up()
        skip_lost_job_ids(highest)
    figures("slurmctld restart during teardown", restarts=attempts,
            killed_while_job_ending_and_reservation_held=hits, jobs_lost_by_slurm=lost,
            jobs_left_in_stage_out_by_slurm=stuck, cancels_repeated=repeated,
            allocation_calls=" | ".join(calls), leaked_resources=0,
            seconds=f"{time.monotonic() - started:.0f}")
    assert hits >= 1, f"none of {attempts} restarts hit a teardown in progress"


def test_slurmrestd_down_while_services_run(orchestrator, client, created):
    """slurmrestd gone for a while: API answers, intents kept, everything converges after."""
    started = time.monotonic()
    names = [unique("restd"), unique("restd")]
    created["services"] += names
    for name in names:
        code, answer = orchestrator.post("/ephemeralservice/reserve",
                                         reserve_body(name, user_token("alice")))
        assert code == 200, answer
    for name in names:
        wait_status(orchestrator, name, "ALLOCATED")
    late = unique("restdlate")
    created["services"].append(late)
    slowest = 0.0
    try:
        kill_daemon("slurmrestd")
        down_at = time.monotonic()
        wait_status(orchestrator, names[1], "ALLOCATED", timeout=60,
                    extra=lambda st: "Slurm unreachable" in st["detail"])
        release(orchestrator, names[0])  # accepted: the cancel waits for Slurm
        code, answer = orchestrator.post("/ephemeralservice/reserve",
                                         reserve_body(late, user_token("alice")))
        assert code == 200 and answer["status"] == "FREE", answer
        while time.monotonic() - down_at < RESTD_DOWN:  # the outage lasts this long
            t0 = time.monotonic()
            for name in [*names, late]:
                status(orchestrator, name)
            slowest = max(slowest, (time.monotonic() - t0) / 3)
            time.sleep(0.5)
        assert status(orchestrator, names[0])["status"] == "STAGINGOUT"
    finally:
        devcluster_up()
    down = time.monotonic() - down_at
    wait_status(orchestrator, names[0], "STOPPED", timeout=120)
    wait_status(orchestrator, names[1], "ALLOCATED", timeout=60,
                extra=lambda st: "unreachable" not in st["detail"])
    wait_status(orchestrator, late, "ALLOCATED", timeout=120)
    for name in [names[1], late]:
        finish(orchestrator, client, name)
    assert len(wait_jobs_ended(client, names[0])) == 1
    wait_all_free(orchestrator)
    figures("slurmrestd down", seconds_down=f"{down:.0f}", services=3,
            slowest_status_ms=f"{slowest * 1000:.0f}", leaked_resources=0,
            seconds=f"{time.monotonic() - started:.0f}")
    assert slowest < 1.0, f"a status took {slowest:.2f} s while slurmrestd was down"
