"""The IO-SEA Session Manager's own Slurm jobs on the mini-cluster (#17).

Each test replays what the Session Manager (wfm-api 1.6.0) does, as an ordinary user
(``deploy/devcluster run --user alice``): it reserves through the API, writes its spec
files in /tmp exactly as it does, and runs its sbatch/srun/scontrol commands, without
``--ioinstrumentation`` (IO-SEA's own SPANK plugin; docs/api.md). Without ``-p``: the
SM's ``location`` becomes the partition, and our locations are not partitions here.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid

import pytest

from tests.poll import poll_until

from .minicluster import DEVCLUSTER, user_token
from .orchestrator import Orchestrator, start, stop

pytestmark = pytest.mark.integration

EXPORT = "--export=ALL,IOI_WORKFLOW_NAME=wf,IOI_WORKFLOW_RUN_ID=wf-s1-20261206"
SPEC_DIR = "/tmp"  # noqa: S108 - where the Session Manager writes its spec files


# --- the Session Manager's side ----------------------------------------------------------


def as_user(user: str, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a Slurm client as ``user`` on the mini-cluster (in /tmp, shared)."""
    return subprocess.run([DEVCLUSTER, "run", "--user", user, *argv], capture_output=True,
                          text=True, timeout=timeout, cwd=SPEC_DIR)


def write_spec(path: str, text: str) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, 0o644)
    return path


def create_file(svc: str, line: str) -> str:
    """bb.spec.create_persistent.<svc> in SPEC_DIR, as the SM's bbcreate_template writes it."""
    return write_spec(f"{SPEC_DIR}/bb.spec.create_persistent.{svc}",
                      "#!/bin/bash\n#SBATCH --output=/tmp/out-create_service-%j.txt\n"
                      "#SBATCH --error=/tmp/err-create_service-%j.txt\n"
                      f"#BB_LUA {line}\nsrun hostname\n")


def destroy_file(svc: str, stype: str = "SBB") -> str:
    return write_spec(f"{SPEC_DIR}/bb.spec.destroy_persistent.{svc}",
                      "#!/bin/bash\n#SBATCH --output=/tmp/out-destroy_service-%j.txt\n"
                      "#SBATCH --error=/tmp/err-destroy_service-%j.txt\n"
                      f"#BB_LUA {stype} destroy_persistent Name={svc}\nsrun hostname\n")


def use_file(svc: str, stype: str = "SBB") -> str:
    return write_spec(f"{SPEC_DIR}/bb.spec.use_persistent.{svc}",
                      f"#!/bin/bash\n#BB_LUA {stype} use_persistent Name={svc}\n")


def sbatch(user: str, *argv: str) -> int:
    """``sbatch ...`` as the SM runs it: the job id parsed from 'Submitted batch job N'."""
    out = as_user(user, "sbatch", *argv)
    m = re.search(r"Submitted batch job (\d+)", out.stdout)
    assert out.returncode == 0 and m, f"sbatch {argv}: {out.stdout}{out.stderr}"
    return int(m.group(1))


def sbb_line(svc: str) -> str:
    return f"SBB create_persistent Name={svc} Flavor=small Targets=/nonexistent/a:/nonexistent/b"


def reserve_sbb(orch: Orchestrator, svc: str, user: str = "alice") -> None:
    """The SM's reserve for an SBB service (a real Slurm token: see test_compat_iosea for
    the SM's placeholder)."""
    body = {"name": svc, "user": user, "user_slurm_token": user_token(user), "type": "SBB",
            "servers": 1, "attributes": {"flavor": "small",
                                         "targets": ["/nonexistent/a", "/nonexistent/b"]}}
    code, answer = orch.post("/ephemeralservice/reserve", body)
    assert code == 200, answer


def slurm_version() -> tuple[int, int]:
    """The mini-cluster's Slurm (22.05 or 24.11), as (major, minor)."""
    out = as_user("alice", "scontrol", "--version").stdout
    major, minor = re.search(r"(\d+)\.(\d+)", out).groups()
    return int(major), int(minor)


def bbstat(user: str) -> list[str]:
    """The 'FA: BB ' lines of ``scontrol show bbstat`` as ``user`` (what the SM reads)."""
    out = as_user(user, "scontrol", "show", "bbstat")
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if line.startswith("FA: BB ")]


def sm_state(user: str, svc: str) -> str:
    """The State the SM reads for ``svc`` (its get_bbstatus_from_scontrol_show_bbstat_output):
    'STOPPED' when not listed."""
    for line in bbstat(user):
        if f" Name={svc} " in line:
            return re.search(r"State=(\S+)", line).group(1)
    return "STOPPED"


# --- Slurm's and the orchestrator's side ---------------------------------------------------


def job_info(job_id: int) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True,
                         text=True, timeout=20).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out)) | {"_raw": out}


def wait_job(job_id: int, states: set[str], timeout: float = 150) -> dict[str, str]:
    seen: list[dict] = [{}]

    def reached() -> dict | None:
        seen[0] = job_info(job_id)
        return seen[0] if seen[0].get("JobState") in states else None

    return poll_until(reached, f"job {job_id}: expected {'/'.join(sorted(states))}", timeout,
                      0.5, last=lambda: seen[0].get("_raw", "unknown"))


def wait_held(job_id: int, timeout: float = 90) -> dict[str, str]:
    """The job once Slurm holds it for a burst-buffer failure (its reason set)."""
    seen: list[dict] = [{}]

    def held() -> dict | None:
        seen[0] = job_info(job_id)
        return seen[0] if "burst_buffer" in seen[0].get("_raw", "") and \
            seen[0].get("Reason", "").startswith("burst_buffer") else None

    return poll_until(held, f"job {job_id}: held by the burst buffer", timeout, 0.5,
                      last=lambda: seen[0].get("_raw", "unknown"))


def status(orch: Orchestrator, svc: str) -> dict:
    code, st = orch.get(f"/ephemeralservice/status/{svc}")
    assert code == 200, st
    return st


def wait_status(orch: Orchestrator, svc: str, wanted: str, timeout: float = 120) -> dict:
    seen: list[dict] = [{}]

    def reached() -> dict | None:
        seen[0] = status(orch, svc)
        return seen[0] if seen[0]["status"] == wanted else None

    return poll_until(reached, f"service {svc}: expected {wanted}", timeout, 0.5,
                      last=lambda: f"{seen[0]}\n{orch.log()[-3000:]}")


def free(orch: Orchestrator) -> dict:
    code, res = orch.get("/server/resources/all")
    assert code == 200
    return {r["server_name"]: r["server_resources"]["free_core_list"] for r in res}


def cancel(*job_ids: int) -> None:
    subprocess.run(["scancel", *map(str, job_ids)], capture_output=True, timeout=20)


def name(kind: str = "sbb", user: str = "alice") -> str:
    """``<user>-<session>-<service>``, the SM's names (hyphens)."""
    return f"{user}-s{uuid.uuid4().hex[:8]}-{kind}"


# --- whole sessions ------------------------------------------------------------------------


def run_session(orch: Orchestrator, svc: str, before: dict, create_line: str,
                *create_opts: str, stype: str = "SBB") -> None:
    """create (sbatch, async) -> status -> step (--bbf, afterany:create) -> destroy: every
    job COMPLETED, the service STOPPED with its datanodes free as ``before`` its reserve."""
    create = sbatch("alice", "-J", "create", EXPORT, *create_opts, create_file(svc, create_line))
    wait_job(create, {"COMPLETED"})
    # The create job completed once its service was up.
    assert status(orch, svc)["status"] == "ALLOCATED"
    assert sm_state("alice", svc) == "staged-in"
    [line] = [x for x in bbstat("alice") if f" Name={svc} " in x]
    assert re.fullmatch(rf"FA: BB Type=(SBB|NFS) bbid=\d+ Name={svc} State=staged-in "
                        r"CreateTime=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", line), line
    # The step: the user's own command plus the dependency and --bbf.
    out = f"{SPEC_DIR}/sm-step-{svc}.txt"
    step = write_spec(f"{SPEC_DIR}/sm-step-{svc}.sh", f"#!/bin/bash\n#SBATCH -o {out}\n"
                      "echo SERVICE=$WFM_SERVICE_0_NAME STATUS=$WFM_SERVICE_0_STATUS\n")
    job = sbatch("alice", "-J", "step", EXPORT, f"--dependency=afterany:{create}",
                 "--bbf", use_file(svc, stype), step)
    wait_job(job, {"COMPLETED"})
    assert open(out).read().strip() == f"SERVICE={svc} STATUS=ALLOCATED"
    # The stop.
    destroy = sbatch("alice", "-J", "destroy", EXPORT, f"--dependency=afterany:{create}",
                     destroy_file(svc, stype))
    wait_job(destroy, {"COMPLETED"})
    st = status(orch, svc)
    assert st["status"] == "STOPPED", st  # already so when the destroy job completed
    assert f"stopped by job {destroy}" in st["detail"] and "destroy_persistent" in st["detail"]
    assert sm_state("alice", svc) == "STOPPED"  # no longer listed
    assert free(orch) == before


def test_an_sbb_session_created_asynchronously_runs_a_step_and_ends_stopped(orchestrator,
                                                                            slurm_cluster):
    svc = name("sbb")
    before = free(orchestrator)
    reserve_sbb(orchestrator, svc)
    run_session(orchestrator, svc, before, sbb_line(svc))


def test_an_nfs_session_created_asynchronously_runs_a_step_and_ends_stopped(orchestrator,
                                                                           slurm_cluster):
    """NFS: the SM reserves with a gssize string and writes a GBF line; --exclusive."""
    svc = name("nfs")
    before = free(orchestrator)
    body = {"name": svc, "user": "alice", "user_slurm_token": user_token("alice"),
            "type": "NFS", "servers": 1,
            "attributes": {"gssize": "2GiB", "mountpoint": "/tmp/sm-nfs-mnt"}}  # noqa: S108
    code, answer = orchestrator.post("/ephemeralservice/reserve", body)
    assert code == 200, answer
    line = (f"GBF create_persistent Name={svc} StorageSize=2GiB Path=/tmp/sm-nfs-mnt "
            "FSType=ganesha MetaDataServers=0 data_dst=/tmp/sm-nfs-dataset")
    run_session(orchestrator, svc, before, line, "--exclusive", stype="GBF")


def test_synchronous_create_use_and_destroy_with_srun_bb(orchestrator, slurm_cluster):
    """srun --bb "#BB_LUA SBB create_persistent ..." hostname returns once the service is
    up; srun --bb use_persistent sees it; srun --bb destroy_persistent stops it."""
    svc = name("sync")
    before = free(orchestrator)
    reserve_sbb(orchestrator, svc)
    out = as_user("alice", "srun", "-J", "create", EXPORT, "--bb", f"#BB_LUA {sbb_line(svc)}",
                  "hostname")
    assert out.returncode == 0 and out.stdout.strip(), out.stderr
    assert status(orchestrator, svc)["status"] == "ALLOCATED"
    out = as_user("alice", "srun", "-J", "interactive", "-N", "1", "-n", "1", "--bb",
                  f"#BB_LUA SBB use_persistent Name={svc}", "printenv", "WFM_SERVICE_0_NAME")
    assert out.returncode == 0 and out.stdout.strip() == svc, out.stderr
    out = as_user("alice", "srun", "-J", "destroy", EXPORT, "--bb",
                  f"#BB_LUA SBB destroy_persistent Name={svc}", "hostname")
    assert out.returncode == 0, out.stderr
    assert status(orchestrator, svc)["status"] == "STOPPED"
    assert free(orchestrator) == before


def test_a_bb_string_without_the_directive_prefix_never_reaches_the_plugin(orchestrator,
                                                                          slurm_cluster):
    """'srun --bb "SBB create_persistent ..."' (no '#BB_LUA'): Slurm 22.05 itself refuses
    it before any hook runs (docs/burst_buffer_plugin.md)."""
    out = as_user("alice", "srun", "--bb", "SBB create_persistent Name=alice-x-y Flavor=small",
                  "hostname")
    assert out.returncode != 0 and "Burst Buffer request invalid" in out.stderr


def test_a_stop_during_a_start_waits_for_the_start_then_stops(orchestrator, slurm_cluster):
    """create, and at once destroy with afterany:create (the SM's stop while starting):
    the create completes once up, the destroy then stops it; nothing is left."""
    svc = name("stop")
    before = free(orchestrator)
    reserve_sbb(orchestrator, svc)
    create = sbatch("alice", "-J", "create", EXPORT, create_file(svc, sbb_line(svc)))
    destroy = sbatch("alice", "-J", "destroy", EXPORT, f"--dependency=afterany:{create}",
                     destroy_file(svc))
    wait_job(create, {"COMPLETED"})
    wait_job(destroy, {"COMPLETED"})
    assert status(orchestrator, svc)["status"] == "STOPPED"
    assert free(orchestrator) == before


def test_a_create_whose_service_cannot_start_ends_with_the_reason(orchestrator,
                                                                  slurm_cluster):
    """The service cannot start (here: released through the API while the create job
    waits): the create job ends CANCELLED with the plugin's reason in Reason and
    SystemComment, so the SM's destroy (afterany) still runs; nothing is left."""
    svc = name("gone")
    before = free(orchestrator)
    reserve_sbb(orchestrator, svc)
    create = sbatch("alice", "-J", "create", EXPORT, create_file(svc, sbb_line(svc)))
    destroy = sbatch("alice", "-J", "destroy", EXPORT, f"--dependency=afterany:{create}",
                     destroy_file(svc))
    code, answer = orchestrator.delete(f"/ephemeralservice/release/{svc}")
    assert code == 200, answer
    info = wait_job(create, {"CANCELLED"})
    assert f"service {svc} cannot start" in info["_raw"], info["_raw"]
    assert "SystemComment=" in info["_raw"]  # its text, kept after the cancel
    wait_job(destroy, {"COMPLETED"})
    assert status(orchestrator, svc)["status"] == "STOPPED"
    assert free(orchestrator) == before


def test_a_create_for_a_name_the_user_did_not_reserve_is_refused(orchestrator, slurm_cluster):
    """bob's create_persistent naming alice's reservation: held, naming the rule; alice's
    reservation and service unchanged."""
    svc = name("mine")
    reserve_sbb(orchestrator, svc)
    wait_status(orchestrator, svc, "ALLOCATED")
    before = status(orchestrator, svc)
    job = sbatch("bob", "-J", "create", EXPORT, create_file(svc, sbb_line(svc)))
    try:
        info = wait_held(job)
        assert f"may not create service {svc}" in info["_raw"], info["_raw"]
        assert "only its own user's services" in info["_raw"]
    finally:
        cancel(job)
    after = status(orchestrator, svc)
    assert after["status"] == "ALLOCATED" and after["detail"] == before["detail"]
    orchestrator.delete(f"/ephemeralservice/release/{svc}")
    wait_status(orchestrator, svc, "STOPPED")


def test_a_destroy_of_another_users_service_is_refused(orchestrator, slurm_cluster):
    """bob's destroy_persistent naming alice's service: held, naming the rule; alice's
    service stays ALLOCATED."""
    svc = name("keep")
    reserve_sbb(orchestrator, svc)
    create = sbatch("alice", "-J", "create", EXPORT, create_file(svc, sbb_line(svc)))
    wait_job(create, {"COMPLETED"})
    job = sbatch("bob", "-J", "destroy", EXPORT, destroy_file(svc))
    try:
        info = wait_held(job)
        assert f"may not destroy service {svc}" in info["_raw"], info["_raw"]
    finally:
        cancel(job)
    assert status(orchestrator, svc)["status"] == "ALLOCATED"
    # bbstat: 22.05 does not say who asks, so bob sees alice's line (documented); 23.02+
    # says, and bob sees only his own.
    assert sm_state("bob", svc) == ("staged-in" if slurm_version() < (23, 2) else "STOPPED")
    assert sm_state("alice", svc) == "staged-in"
    destroy = sbatch("alice", "-J", "destroy", EXPORT, destroy_file(svc))
    wait_job(destroy, {"COMPLETED"})
    assert status(orchestrator, svc)["status"] == "STOPPED"


# --- unclaimed_timeout: a dedicated orchestrator ----------------------------------------


def test_an_unclaimed_reservation_is_released_after_unclaimed_timeout(orchestrator,
                                                                      slurm_cluster,
                                                                      tmp_path):
    """The SM reserved, then never created (it failed, or the user never came): with
    unclaimed_timeout = 10 the reservation is released, its service job cancelled, and
    its status says why. A dedicated orchestrator on another port (its service job's
    setup reaches the session's orchestrator and is held; that changes nothing here)."""
    port = 18080 + os.getpid() % 1000
    directory = str(tmp_path)
    server = start(directory, port=port, extra="unclaimed_timeout = 10\nteardown_grace = 5\n")
    try:
        svc = name("left")
        before = free(server)
        reserve_sbb(server, svc)
        assert status(server, svc)["status"] == "STAGINGIN"
        st = wait_status(server, svc, "STOPPED", timeout=90)
        assert st["detail"].startswith("released by the orchestrator: unclaimed_timeout "
                                       "(10 s) passed"), st
        assert "unclaimed_timeout (10 s)" in server.log()
        assert free(server) == before
    finally:
        stop(server)

