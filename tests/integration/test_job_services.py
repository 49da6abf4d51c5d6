"""Services for the length of one job, asked for in its batch script (#18), on the
mini-cluster: ``#BB_LUA wfm_job`` lines submitted with real ``sbatch`` as alice, the
orchestrator starting each service on the datanodes before the job runs and releasing it
when the job ends (docs/burst_buffer_plugin.md)."""

from __future__ import annotations

import re
import subprocess
import time
import uuid

import pytest

from .job_services import (
    NFS,
    SBB,
    job_script,
    service_name,
    statuses,
    wait_free,
    wait_service,
)
from .minicluster import slurm_cmd, user_token
from .session_manager import (
    as_user,
    bbstat,
    cancel,
    idle,
    job_info,
    sbatch,
    status,
    wait_job,
    wait_status,
)

pytestmark = pytest.mark.integration

ENV = ("echo NAME=$WFM_JOB_SCRATCH_NAME SERVERS=$WFM_JOB_SCRATCH_SERVERS "
       "COUNT=$WFM_JOB_COUNT")


def fill_cluster(orch, names: list[str]) -> None:
    """Both datanodes taken whole by alice's ordinary reservations, named into ``names``
    as they are made (the caller releases them, whatever fails)."""
    idle(orch)
    for _ in range(2):
        name = f"alice_fill_{uuid.uuid4().hex[:8]}"
        body = {"name": name, "user": "alice", "user_slurm_token": user_token("alice"),
                "type": "SBB", "attributes": {"flavor": "large", "targets": ["/nonexistent/x"]}}
        code, answer = orch.post("/ephemeralservice/reserve", body)
        assert code == 200, answer
        names.append(name)
        assert answer["status"] == "FREE", answer


def release(orch, *names: str) -> None:
    for name in names:
        orch.delete(f"/ephemeralservice/release/{name}")
    for name in names:
        wait_status(orch, name, "STOPPED")


def test_a_job_with_one_service_gets_it_for_its_life(orchestrator, slurm_cluster):
    before = idle(orchestrator)
    script, out = job_script(f"{SBB} name=scratch", body=ENV)
    job = sbatch("alice", script)
    name = service_name(job, "scratch")
    wait_job(job, {"COMPLETED"}, timeout=240)
    text = open(out).read()
    assert re.fullmatch(rf"NAME={name} SERVERS=dn[12] COUNT=1\n", text), text
    st = wait_status(orchestrator, name, "STOPPED")
    assert st["scope"] == "job" and st["job_id"] == job and st["user"] == "alice"
    assert f"job {job} ended" in st["detail"], st
    wait_free(orchestrator, before)


def test_a_job_with_two_services_gets_both(orchestrator, slurm_cluster):
    before = idle(orchestrator)
    body = "echo $WFM_JOB_SERVICES $WFM_JOB_HOME_MOUNTPOINT $WFM_JOB_BB_TYPE"
    script, out = job_script(f"{SBB} name=bb", f"{NFS} name=home", body=body)
    job = sbatch("alice", script)
    wait_job(job, {"COMPLETED"}, timeout=240)
    bb, home = service_name(job, "bb"), service_name(job, "home")
    assert open(out).read() == f"{bb},{home} /tmp/wfm-jobsvc-mnt SBB\n"
    for name in (bb, home):
        wait_status(orchestrator, name, "STOPPED")
    assert [s["name"] for s in statuses(orchestrator, job)] == [bb, home]
    wait_free(orchestrator, before)


def test_a_request_larger_than_the_cluster_is_refused_at_submission(orchestrator,
                                                                     slurm_cluster):
    """Two datanodes in the mini-cluster: three servers can never fit (the limits file the
    orchestrator wrote, read by the plugin inside slurmctld; no network call)."""
    script, _ = job_script("type=SBB flavor=large servers=3 targets=/x name=big")
    out = as_user("alice", "sbatch", script)
    assert out.returncode != 0, out.stdout
    assert "can never fit: it needs 3 datanode(s)" in out.stderr, out.stderr
    assert "Submitted batch job" not in out.stdout


def test_a_bad_value_is_refused_at_submission_naming_it(orchestrator, slurm_cluster):
    script, _ = job_script("type=NFS gssize=2X mountpoint=/m")
    out = as_user("alice", "sbatch", script)
    assert out.returncode != 0 and "wfm_job: gssize '2X' is not a size" in out.stderr, \
        out.stderr


PLUGIN_SLEEP = re.compile(r"sh -c (-- )?'sleep' ")


def plugin_sleeps(samples: int = 6, every: float = 1.5) -> int:
    """In how many of ``samples`` looks, ``every`` s apart, a hook of the plugin was
    sleeping between two looks at the orchestrator: the plugin's runner (io.popen) runs
    ``sh -c 'sleep' '<poll>' ...`` (``sh -c -- ...`` with Debian 13's C library), and
    nothing else does."""
    seen = 0
    for i in range(samples):
        if i:
            time.sleep(every)
        out = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True,
                             timeout=10, check=True).stdout
        seen += any(PLUGIN_SLEEP.match(line) for line in out.splitlines())
    return seen


def test_a_full_cluster_keeps_the_job_in_stage_in_then_it_runs(orchestrator, slurm_cluster,
                                                                 slurm_version):
    """On 24.05+ the wait holds no process (Slurm polls slurm_bb_test_data_in, BUSY, and
    StageInTimeout alone bounds it); on 22.05 data_in waits inside, sleeping between looks."""
    before = idle(orchestrator)
    fillers: list[str] = []
    try:
        fill_cluster(orchestrator, fillers)
        script, out = job_script(f"{SBB} name=scratch", body=ENV)
        job = sbatch("alice", script)
        name = service_name(job, "scratch")
        st = wait_service(orchestrator, name, "STAGINGIN", timeout=90)
        assert st["detail"].startswith("queued at position 1"), st
        info = job_info(job)
        assert info["JobState"] == "PENDING", info["_raw"]
        assert [x for x in bbstat("alice") if f" Name={name} State=staging-in " in x]
        sleeping = plugin_sleeps()
        if slurm_version == "22.05":
            assert sleeping >= 4, "data_in waits inside the hook on 22.05"
        else:
            assert sleeping == 0, "no hook waits on 24.05+: Slurm polls test_data_in"
        assert job_info(job)["JobState"] == "PENDING"
        release(orchestrator, fillers[0])
        wait_job(job, {"COMPLETED"}, timeout=240)
        assert open(out).read().startswith(f"NAME={name} ")
        wait_status(orchestrator, name, "STOPPED")
    finally:
        release(orchestrator, *fillers)
    wait_free(orchestrator, before)


def test_a_job_cancelled_while_staging_in_leaves_nothing_reserved(orchestrator, slurm_cluster):
    before = idle(orchestrator)
    fillers: list[str] = []
    try:
        fill_cluster(orchestrator, fillers)
        script, _ = job_script(f"{SBB} name=scratch")
        job = sbatch("alice", script)
        name = service_name(job, "scratch")
        wait_service(orchestrator, name, "STAGINGIN", timeout=90)
        cancel(job)
        wait_job(job, {"CANCELLED"})
        st = wait_status(orchestrator, name, "STOPPED")
        assert st["detail"] == "removed from the queue", st  # never held resources
    finally:
        release(orchestrator, *fillers)
    wait_free(orchestrator, before)


def test_a_failed_job_releases_its_service(orchestrator, slurm_cluster):
    before = idle(orchestrator)
    script, _ = job_script(f"{SBB} name=scratch", body="exit 3")
    job = sbatch("alice", script)
    wait_job(job, {"FAILED"}, timeout=240)
    wait_status(orchestrator, service_name(job, "scratch"), "STOPPED")
    wait_free(orchestrator, before)


def test_a_requeued_job_keeps_its_service_until_its_real_end(orchestrator, slurm_cluster):
    """The first run waits; ``scontrol requeue`` puts it back in the queue (Slurm tears its
    burst buffer down): the service stays ALLOCATED, the rerun finds it, and only the end
    of the rerun releases it."""
    before = idle(orchestrator)
    body = ('if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then sleep 300; fi\n'
            "echo RUN=${SLURM_RESTART_COUNT:-0} NAME=$WFM_JOB_SCRATCH_NAME")
    script, out = job_script(f"{SBB} name=scratch", body=body, sbatch="#SBATCH --requeue\n")
    job = sbatch("alice", script)
    name = service_name(job, "scratch")
    try:
        wait_job(job, {"RUNNING"}, timeout=240)
        first = status(orchestrator, name)
        assert first["status"] == "ALLOCATED", first
        requeued = slurm_cmd("scontrol", "requeue", str(job), timeout=20)
        assert requeued.returncode == 0, requeued.stderr
        wait_job(job, {"PENDING"}, timeout=60)
        wait_job(job, {"COMPLETED"}, timeout=400)
        assert open(out).read().strip() == f"RUN=1 NAME={name}"
    finally:
        cancel(job)
    st = wait_status(orchestrator, name, "STOPPED")
    assert st["id"] == first["id"], "the rerun used the same reservation"
    assert f"job {job} ended" in st["detail"]
    released = f"job {job} ended: releasing its job-scoped services {name}"
    assert orchestrator.log().count(released) == 1, "released once, at the real end"
    wait_free(orchestrator, before)
