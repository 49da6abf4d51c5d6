"""Helpers of the mini-cluster suites: the orchestrator on 8080 killed and restarted,
Slurm daemons killed and brought back, services followed through the API.

The orchestrator is the one of ``tests/integration/orchestrator.py`` (the
``orchestrator`` session fixture: 127.0.0.1:8080, the burst-buffer plugin's
``orchestrator_url``, one test session at a time through its lock file).
These suites take its process over: they kill it and start it again on the
same configuration and state database (optionally with ``WFM_FAULT``), and
leave a normal process running for whoever uses the fixture next.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest

from tests.conftest import server_env
from tests.integration.minicluster import DEVCLUSTER, REPO, RUN_DIR
from tests.poll import poll, poll_until
from wfm_orchestrator.service_job import TAG_PREFIX
from wfm_orchestrator.slurm import ENDED_STATES as TERMINAL
from wfm_orchestrator.slurm import SlurmClient


def unique(prefix: str) -> str:
    return f"alice_{prefix}_{uuid.uuid4().hex[:8]}"


# --- the orchestrator process -------------------------------------------------------


def kill9(orch) -> None:
    if orch.proc.poll() is None:
        os.kill(orch.proc.pid, signal.SIGKILL)
        orch.proc.wait(30)


def launch(orch, fault: str = "") -> None:
    """Start the orchestrator again on the same configuration and state (no wait)."""
    assert orch.proc.poll() is not None, "the previous orchestrator still runs"
    env = server_env()
    env.pop("WFM_FAULT", None)
    if fault:
        env["WFM_FAULT"] = fault
    with open(orch.log_path, "ab") as log:
        log.write(f"\n===== restart{' with WFM_FAULT=' + fault if fault else ''} =====\n"
                  .encode())
        log.flush()
        orch.proc = subprocess.Popen(
            [sys.executable, "-m", "wfm_orchestrator.cli", "serve", "--config",
             orch.config_path], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_answering(orch, timeout: float = 30.0, may_exit: bool = False) -> bool:
    """True once it answers; False if it exited (allowed only with ``may_exit``)."""
    def answers() -> str | None:
        if orch.proc.poll() is not None:
            if may_exit:
                return "exited"
            pytest.fail(f"the orchestrator exited with {orch.proc.returncode}:\n"
                        f"{orch.log()[-3000:]}")
        try:
            return "answers" if orch.get("/location/list")[0] == 200 else None
        except OSError:
            return None

    return poll_until(answers, "the orchestrator answers", timeout, 0.1,
                      last=lambda: orch.log()[-3000:]) == "answers"


def restart(orch, fault: str = "") -> None:
    kill9(orch)
    launch(orch, fault)
    wait_answering(orch, may_exit=bool(fault))


def wait_exit(orch, timeout: float = 60.0) -> int:
    try:
        return orch.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the orchestrator did not reach its fault point within {timeout:g} s:\n"
                    f"{orch.log()[-3000:]}")


# --- services through the API --------------------------------------------------------


def status(orch, name: str) -> dict:
    code, st = orch.get(f"/ephemeralservice/status/{name}")
    assert code == 200, f"status of {name}: {code} {st}"
    return st


def wait_status(orch, name: str, wanted: str | tuple[str, ...], timeout: float = 120.0,
                extra=None, required: bool = True) -> dict | None:
    """Poll the service's status until it is ``wanted`` (and ``extra(st)`` holds).

    On timeout: fail, or (``required=False``) return the last status seen (None if none).
    """
    wanted = (wanted,) if isinstance(wanted, str) else wanted
    seen: list[dict | None] = [None]

    def reached() -> dict | None:
        try:
            seen[0] = status(orch, name)
        except OSError:
            return None
        st = seen[0]
        return st if st["status"] in wanted and (extra is None or extra(st)) else None

    if not required:
        return poll(reached, timeout, 0.3) or seen[0]
    return poll_until(reached, f"service {name}: expected {'/'.join(wanted)}", timeout, 0.3,
                      last=lambda: f"{seen[0]}\n{orch.log()[-3000:]}")


def reserve_body(name: str, token: str, flavor: str = "small", location=None) -> dict:
    body = {"name": name, "user": "alice", "user_slurm_token": token, "type": "SBB",
            "attributes": {"flavor": flavor, "targets": ["/nonexistent/*"]}}
    if location:
        body["location"] = location
    return body


def release(orch, name: str) -> None:
    code, answer = orch.delete(f"/ephemeralservice/release/{name}")
    assert code == 200, f"release {name}: {code} {answer}"


def all_free(orch) -> list[str]:
    """Datanodes with anything held (empty when every resource is free)."""
    code, res = orch.get("/server/resources/all")
    assert code == 200, res
    return [f"{e['server_name']}: {e['server_resources']}" for e in res
            if e["server_resources"]["free_cores"] != e["server_resources"]["cores"]
            or e["server_resources"]["free_msize"] != e["server_resources"]["msize"]
            or e["server_resources"]["free_ssize"] != e["server_resources"]["ssize"]]


def wait_all_free(orch, timeout: float = 120.0) -> None:
    def live_services() -> str:
        _, live = orch.get("/ephemeralservice/status")
        return (f"held: {all_free(orch)}; live services: "
                f"{[s for s in live if s['status'] != 'STOPPED']}")

    poll_until(lambda: not all_free(orch), "every resource free", timeout, 0.5,
               last=live_services)


# --- Slurm ------------------------------------------------------------------------


def tagged_jobs(client: SlurmClient, name: str) -> list:
    """Every job Slurm knows that carries the service's tag (any seq)."""
    prefix = f"{TAG_PREFIX}{name}:"
    return [j for j in client.jobs() if j.comment.startswith(prefix)]


def active(jobs) -> list:
    """Jobs still running or waiting to. STAGE_OUT counts as done: the job's tasks are
    gone and its nodes free; Slurm 22.05 may leave a job killed during its post-run phase
    in STAGE_OUT ("Stage-out in progress") for good after a slurmctld restart."""
    return [j for j in jobs if j.state not in TERMINAL and j.state != "STAGE_OUT"]


def wait_jobs_ended(client: SlurmClient, name: str, timeout: float = 90.0) -> list:
    """The service's jobs once none is active (a list, maybe empty)."""
    seen: list[list] = [[]]

    def ended() -> tuple[list] | None:
        seen[0] = tagged_jobs(client, name)
        # In a tuple: no job at all is an answer too, and an empty list is falsy.
        return None if active(seen[0]) else (seen[0],)

    return poll_until(ended, f"jobs of {name} ended", timeout, 0.5,
                      last=lambda: [(j.job_id, j.state, j.reason) for j in seen[0]])[0]


def daemon_pid(name: str) -> int:
    with open(os.path.join(RUN_DIR, f"{name}.pid")) as fh:
        return int(fh.read().strip())


def kill_daemon(name: str, sig: int = signal.SIGKILL, timeout: float = 30.0) -> int:
    """Kill a mini-cluster daemon by the pid in its pid file; wait until it is gone."""
    pid = daemon_pid(name)
    os.kill(pid, sig)

    def gone() -> bool:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except FileNotFoundError:
            return True

    poll_until(gone, f"{name} (pid {pid}) gone after signal {sig}", timeout, 0.1)
    return pid


def devcluster_up(timeout: float = 240) -> str:
    """``deploy/devcluster up``: restarts what is missing; fails loudly if it cannot."""
    out = subprocess.run([DEVCLUSTER, "up"], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        pytest.fail(f"deploy/devcluster up failed ({out.returncode}):\n{out.stderr[-3000:]}")
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    assert "is UP" in ping.stdout, ping.stdout + ping.stderr
    return out.stderr


def skip_lost_job_ids(highest: int, timeout: float = 60.0) -> None:
    """After slurmctld restarts that lost jobs: make Slurm's next job id greater than
    ``highest`` (the highest the test saw), by submitting and cancelling held no-op jobs.

    Slurm hands the ids of jobs it lost (accepted, not yet saved) out again, and a slurmd
    that still ran a lost job kills a new job under the same id: its credential is revoked
    (22.05: "Orphan StepId=2.0 reported on node dn1", then the next test's job 2 ends
    WTERMSIG 9 a second after it started). Fresh ids keep the next test out of it.
    """
    def past() -> int | None:
        out = subprocess.run(["sbatch", "--parsable", "--hold", "-o", "/dev/null",
                              "-J", "wfm-skip-id", "--wrap", "true"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        job_id = int(out.stdout.strip().split(";")[0])
        subprocess.run(["scancel", str(job_id)], capture_output=True, timeout=30)
        return job_id if job_id > highest else None

    poll_until(past, f"Slurm's next job id past {highest}", timeout, 0)


def clean_up(orch, client: SlurmClient, services: list[str], steps: list[str]) -> list[str]:
    """After a test, passed or failed: release its services, abort its steps, cancel any of
    their jobs still active, so that the mini-cluster is left clean. Returns what it did."""
    done = []
    if orch.proc.poll() is not None:
        launch(orch)
        wait_answering(orch)
    for name in services:
        if orch.delete(f"/ephemeralservice/release/{name}")[0] == 200:
            done.append(f"released {name}")
    for step in steps:
        code, st = orch.get(f"/step/status/{step}")
        if code == 200 and st.get("status") in ("PENDING", "RUNNING", "STAGE_OUT"):
            orch.delete(f"/step/abort/{step}")
            done.append(f"aborted {step}")
    names = tuple(services) + tuple(steps)
    left: list[list] = [[]]

    def settled() -> bool:
        left[0] = active(j for j in client.jobs() if j.name.startswith(names))
        return not left[0]

    # Jobs still active after a minute are cancelled here: the next test needs the nodes.
    if names and not poll(settled, 60, 0.5):
        for j in left[0]:
            client.cancel(j.job_id, signal="SIGKILL")
            done.append(f"cancelled job {j.job_id} ({j.name})")
    return done
