"""A job's own services (#BB_LUA wfm_job, #18): another user's job can never touch them
(docs/security.md §13).

alice's job holds a service for its life; bob writes real batch scripts naming it and
submits them with real ``sbatch``, his own job-scoped job ends beside it, and the
plugin's call is replayed for alice's job with bob's uid, against the session
orchestrator on the mini-cluster.
"""

from __future__ import annotations

import pytest

from tests.integration.job_services import SBB, job_script, service_name
from tests.integration.session_manager import sbatch as sbatch_file
from tests.integration.session_manager import wait_held
from tests.integration.session_manager import wait_job as wait_job_state

from .conftest import ALICE, BOB, cancel, reserve_body, sbatch, uid_of, wait_status

pytestmark = pytest.mark.integration


def alices_running_job(orchestrator) -> tuple[int, str]:
    """alice's job, RUNNING with its service ALLOCATED: (job id, service name)."""
    script, _ = job_script(f"{SBB} name=scratch", body="sleep 300")
    job = sbatch_file(ALICE, script)
    wait_job_state(job, {"RUNNING"}, timeout=240)
    name = service_name(job, "scratch")
    assert wait_status(orchestrator, name, "ALLOCATED")["job_id"] == job
    return job, name


def test_bobs_jobs_cannot_use_or_bind_alices_job_scoped_service(orchestrator, slurm_cluster):
    job, name = alices_running_job(orchestrator)
    held = []
    try:
        for directive, rule in ((f"wfm_use name={name}", "only its own user's services"),
                                (f"wfm_service name={name}", "belongs to another user")):
            got = sbatch(BOB, f"#!/bin/bash\n#SBATCH --time=2\n#BB_LUA {directive}\nsleep 5\n")
            assert got.returncode == 0, got.err
            held.append(got.job_id)
            info = wait_held(got.job_id)
            assert rule in info["_raw"], info["_raw"]
        st = wait_status(orchestrator, name, "ALLOCATED")
        assert st["job_id"] == job and st["user"] == ALICE
    finally:
        for j in (*held, job):
            cancel(j)
    wait_status(orchestrator, name, "STOPPED")


def test_only_a_jobs_own_teardown_releases_its_services(orchestrator, slurm_cluster):
    """bob's job-scoped job ends beside alice's: its teardown (DELETE server/jobservice
    with its job id) releases bob's service only; the same call with another job id
    releases nothing of alice's."""
    job, name = alices_running_job(orchestrator)
    try:
        script, _ = job_script(f"{SBB} name=scratch", body="true")
        bobs = sbatch_file(BOB, script)
        wait_job_state(bobs, {"COMPLETED"}, timeout=240)
        wait_status(orchestrator, service_name(bobs, "scratch", BOB), "STOPPED")
        code, answer = orchestrator.request("DELETE", f"/server/jobservice?job_id={bobs}")
        assert code == 200 and answer["released"] == [], answer
        st = wait_status(orchestrator, name, "ALLOCATED")
        assert st["job_id"] == job
    finally:
        cancel(job)
    wait_status(orchestrator, name, "STOPPED")


def test_the_plugins_call_reserves_only_for_a_live_job_of_the_uid_carrying_wfm_job(
        orchestrator, slurm_cluster):
    """POST server/jobservice (what a holder of the plugin's token could send): for
    alice's job with bob's uid, 403 naming uid; for bob's job without the directive, 403
    naming job_id; nothing is reserved."""
    job, name = alices_running_job(orchestrator)
    # Its output where bob may write: in the submission's directory (/) its launch
    # fails at once, and the answer would then be about a FAILED job, not the directive.
    plain = sbatch(BOB, "#!/bin/bash\n#SBATCH --time=2\n#SBATCH --output=/dev/null\n"
                   "sleep 120\n")
    assert plain.returncode == 0, plain.err
    body = {"type": "SBB", "name": "grab",
            "attributes": {"flavor": "small", "targets": ["/x"]}}
    try:
        code, answer = orchestrator.request(
            "POST", f"/server/jobservice?job_id={job}&uid={uid_of(BOB)}", body)
        assert code == 403 and answer["field"] == "uid", answer
        code, answer = orchestrator.request(
            "POST", f"/server/jobservice?job_id={plain.job_id}&uid={uid_of(BOB)}", body)
        assert code == 403 and answer["field"] == "job_id" and "wfm_job" in answer["message"]
        for grabbed in (service_name(job, "grab"), service_name(job, "grab", BOB),
                        service_name(plain.job_id, "grab", BOB)):
            # No such service: the path reads the name as a user id, who has none ([]).
            code, answer = orchestrator.get(f"/ephemeralservice/status/{grabbed}")
            assert (code, answer) == (200, []), answer
    finally:
        cancel(plain.job_id)
        cancel(job)
    wait_status(orchestrator, name, "STOPPED")


def test_an_ordinary_reserve_cannot_take_a_jobs_name_first(orchestrator, slurm_cluster):
    """bob (through the Session Manager) reserving the name alice's next job will get:
    400 naming ``name``."""
    code, answer = orchestrator.post("/ephemeralservice/reserve",
                                     reserve_body(f"{ALICE}_job999999_scratch", BOB))
    assert code == 400 and answer["field"] == "name", answer
    assert "job-scoped" in answer["message"]
