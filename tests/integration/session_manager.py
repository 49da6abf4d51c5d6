"""The IO-SEA Session Manager's side of its Slurm jobs, replayed on the mini-cluster: its
spec files, its sbatch/srun/scontrol commands as an ordinary user, and waits on what they
do (tests/integration/test_session_manager.py, tests/security/test_session_manager.py).

Without ``--ioinstrumentation`` (IO-SEA's own SPANK plugin; docs/api.md) and without
``-p``: the SM's ``location`` becomes the partition, and our locations are not partitions.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid

from tests.poll import poll_until

from .minicluster import DEVCLUSTER, slurm_cmd, user_token
from .orchestrator import Orchestrator

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
    out = slurm_cmd("scontrol", "show", "job", "-o", str(job_id), timeout=20).stdout
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


def idle(orch: Orchestrator, timeout: float = 120) -> dict:
    """Until no datanode holds anything (an earlier test's services released): the free
    cores of each, as ``free`` gives them."""
    seen: list[object] = [None]

    def empty() -> dict | None:
        code, res = orch.get("/server/resources/all")
        assert code == 200, res
        seen[0] = res
        if all(r["server_resources"]["free_core_list"] == r["server_resources"]["core_list"]
               for r in res):
            return {r["server_name"]: r["server_resources"]["free_core_list"] for r in res}
        return None

    return poll_until(empty, "every datanode free", timeout, 0.5,
                      last=lambda: f"{seen[0]}\n{orch.log()[-3000:]}")


def _proc(pid: str, what: str) -> str:
    try:
        with open(f"/proc/{pid}/{what}", encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:  # ended meanwhile
        return ""


def _parent(pid: str) -> str:
    # the field after the command (in parentheses, which may hold spaces) and the state
    stat = _proc(pid, "stat")
    return stat[stat.rfind(")") + 1:].split()[1] if stat else ""


def waiting_hooks() -> dict[str, list[str]]:
    """The plugin's hooks that wait now: slurmscriptd's children with a ``sleep`` of the
    plugin's M.run under them (its io.popen's shell), each with the pipes it holds
    (``pipe:[inode]``, once per descriptor)."""
    hooks: dict[str, list[str]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if _proc(pid, "comm").strip() != "sleep":
            continue
        hook = _parent(_parent(pid))
        if not hook or _proc(hook, "comm").strip() != "slurmscriptd":
            continue
        pipes = []
        for fd in os.listdir(f"/proc/{hook}/fd") if os.path.isdir(f"/proc/{hook}/fd") else ():
            try:
                target = os.readlink(f"/proc/{hook}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("pipe:"):
                pipes.append(target)
        hooks[hook] = pipes
    return hooks


def cancel(*job_ids: int) -> None:
    slurm_cmd("scancel", *map(str, job_ids), timeout=20)


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


