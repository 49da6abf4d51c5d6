"""Ephemeral services end to end: the orchestrator, the mini-cluster and the burst-buffer plugin.

reserve -> the service job runs on the reserved datanodes as the user, with
the allocation in its environment -> ALLOCATED -> release -> STOPPED and the
resources free again.
"""

from __future__ import annotations

import os
import pwd
import re
import time
import urllib.request
import uuid

import pytest

from tests.poll import poll_until
from wfm_orchestrator.slurm import JobSpec, service_directive, use_directive

from .minicluster import SLURMCTLD_LOG, node_taken, teardown_killed, user_token
from .orchestrator import reloaded_with

pytestmark = pytest.mark.integration
SERVICES_ROOT = "/var/tmp/wfm-services"  # noqa: S108 - the mini-cluster's service areas


def unique(prefix: str) -> str:
    return f"alice_{prefix}_{uuid.uuid4().hex[:8]}"


def wait_status(orch, name: str, wanted: str, timeout: float = 90) -> dict:
    """The service's status once it is ``wanted``; fails with the last one and the log."""
    seen: list[dict | None] = [None]

    def reached() -> dict | None:
        code, seen[0] = orch.get(f"/ephemeralservice/status/{name}")
        assert code == 200, seen[0]
        return seen[0] if seen[0]["status"] == wanted else None

    return poll_until(reached, f"service {name}: expected {wanted}", timeout, 0.5,
                      last=lambda: f"{seen[0]}\n{orch.log()[-3000:]}")


def reserve(orch, name: str, user: str = "alice", flavor: str = "small", targets=None,
            location=None) -> None:
    body = {"name": name, "user": user, "user_slurm_token": user_token(user), "type": "SBB",
            "attributes": {"flavor": flavor, "targets": targets or ["/nonexistent/*"]}}
    if location:
        body["location"] = location
    code, answer = orch.post("/ephemeralservice/reserve", body)
    assert code == 200, answer


def free_cores(orch, server: str) -> list[int]:
    code, res = orch.get(f"/server/resources/{server}")
    assert code == 200
    return res["free_core_list"]


def release(orch, name: str) -> None:
    code, answer = orch.delete(f"/ephemeralservice/release/{name}")
    assert code == 200, answer


def test_service_runs_as_the_user_on_its_datanodes_then_stops(orchestrator, slurm_cluster,
                                                              client, tmp_path):
    """reserve -> job as alice on the reserved node with the allocation -> ALLOCATED ->
    release (stage-out) -> STOPPED, every resource free."""
    home = pwd.getpwnam("alice").pw_dir
    source = os.path.join(home, f"e2e-{uuid.uuid4().hex[:6]}.dat")
    with open(source, "w") as fh:
        fh.write("original\n")
    os.chown(source, pwd.getpwnam("alice").pw_uid, pwd.getpwnam("alice").pw_gid)
    before = free_cores(orchestrator, "dn1")
    name = unique("svc")
    reserve(orchestrator, name, targets=[source], location=["loc1"])
    status = wait_status(orchestrator, name, "ALLOCATED")
    assert "running on dn1" in status["detail"]

    code, alloc = orchestrator.get(f"/ephemeralservice/status/{name}")
    area = os.path.join(SERVICES_ROOT, name, "dn1")
    env_file = os.path.join(area, "allocation.env")
    poll_until(lambda: os.path.exists(os.path.join(area, "state")) and
               open(os.path.join(area, "state")).read().strip() == "ready", "service ready",
               60, 0.5)
    assert os.stat(env_file).st_uid == pwd.getpwnam("alice").pw_uid  # ran as alice
    env = dict(line.strip().split("=", 1) for line in open(env_file) if "=" in line)
    assert env["WFM_SERVICE_NAME"] == name
    assert env["WFM_SERVERS"] == "dn1" and env["WFM_SERVER_0_NAME"] == "dn1"
    assert env["WFM_SERVER_0_CORES"] == "2" and env["WFM_SERVER_0_MSIZE"] == "5120"
    cores = [int(c) for c in env["WFM_SERVER_0_CORE_LIST"].split(",")]
    assert set(cores).isdisjoint(free_cores(orchestrator, "dn1"))
    jobs = [j for j in client.jobs() if j.name == name and j.is_active]
    assert len(jobs) == 1 and jobs[0].user == "alice" and jobs[0].nodes == ("dn1",)
    assert jobs[0].partition == "data"

    staged = os.path.join(area, "data", f"1.{os.path.basename(source)}")
    assert open(staged).read() == "original\n"  # staged in
    with open(staged, "a") as fh:
        fh.write("written by the step\n")
    os.utime(staged, (time.time() + 5, time.time() + 5))
    release(orchestrator, name)
    status = wait_status(orchestrator, name, "STOPPED")
    assert open(source).read() == "original\nwritten by the step\n"  # staged out
    assert free_cores(orchestrator, "dn1") == before
    code, _ = orchestrator.delete(f"/ephemeralservice/release/{name}")
    assert code == 500  # already released


def test_two_services_on_one_datanode_get_disjoint_core_lists(orchestrator, slurm_cluster):
    """Two services placed on dn1 are bound to disjoint cores, each in its own job."""
    names = [unique("a"), unique("b")]
    for name in names:
        reserve(orchestrator, name, location=["loc1"])
    core_sets = []
    for name in names:
        wait_status(orchestrator, name, "ALLOCATED")
        env_file = os.path.join(SERVICES_ROOT, name, "dn1", "allocation.env")
        poll_until(lambda f=env_file: os.path.exists(f) and os.path.getsize(f) > 0,
                   f"{env_file} written", 60, 0.5)
        env = dict(line.strip().split("=", 1) for line in open(env_file) if "=" in line)
        core_sets.append(set(env["WFM_SERVER_0_CORE_LIST"].split(",")))
    assert core_sets[0].isdisjoint(core_sets[1]) and all(len(c) == 2 for c in core_sets)
    for name in names:
        release(orchestrator, name)
    for name in names:
        wait_status(orchestrator, name, "STOPPED")


def test_service_job_cancelled_outside_leaves_status_and_resources_consistent(
        orchestrator, slurm_cluster, client):
    """A service job killed behind the orchestrator's back: reported, then its resources freed."""
    before = free_cores(orchestrator, "dn2")
    name = unique("killed")
    reserve(orchestrator, name, location=["loc2"])
    wait_status(orchestrator, name, "ALLOCATED")
    [job] = [j for j in client.jobs() if j.name == name and j.is_active]
    client.cancel(job.job_id, signal="SIGKILL")
    status = wait_status(orchestrator, name, "STOPPED")
    assert status["detail"]
    assert free_cores(orchestrator, "dn2") == before
    code, answer = orchestrator.delete(f"/ephemeralservice/release/{name}")
    assert code == 500 and "not found or already released" in answer["message"]


def test_step_job_naming_a_service_sees_its_access_details(orchestrator, slurm_cluster, client,
                                                           job_factory):
    """A job with '#BB_LUA wfm_use name=<svc> hint=RO' gets WFM_SERVICE_0_* in its environment."""
    name = unique("used")
    reserve(orchestrator, name)
    wait_status(orchestrator, name, "ALLOCATED")
    home = pwd.getpwnam("alice").pw_dir
    out = os.path.join(home, f"step-env-{uuid.uuid4().hex[:6]}.txt")
    spec = JobSpec(name=f"step_{uuid.uuid4().hex[:6]}", command=["/usr/bin/env"],
                   partition="compute", stdout=out, bb=[use_directive(name, "RO")], cwd=home)
    job_id = job_factory(spec, user="alice")
    poll_until(lambda: (j := client.job(job_id)) is not None and j.is_terminal,
               f"step job {job_id} ended", 90, 0.5, last=lambda: client.job(job_id))
    assert client.job(job_id).state == "COMPLETED"
    env = dict(line.strip().split("=", 1) for line in open(out) if "=" in line)
    assert env["WFM_SERVICE_0_NAME"] == name
    assert env["WFM_SERVICE_0_HINT"] == "RO"
    assert env["WFM_SERVICE_0_STATUS"] in ("ALLOCATED", "STAGEDIN")
    release(orchestrator, name)
    wait_status(orchestrator, name, "STOPPED")


# Above the 3-18 s Slurm takes between a job's setup (its binding) and its start: a job
# that starts normally is never replaced.
STUCK_JOB_TIMEOUT = 30


def test_a_bound_job_slurm_keeps_pending_is_replaced_and_the_new_one_runs(
        orchestrator, slurm_cluster, client):
    """dn1 taken by bob's job: alice's service job is set up (bound) but cannot start.
    After stuck_job_timeout it is replaced, its teardown frees nothing; once dn1 is free
    the new job binds and runs: ALLOCATED, the status says so; release frees all."""
    before = free_cores(orchestrator, "dn1")
    since = os.path.getsize(SLURMCTLD_LOG)
    name = unique("stuck")
    replaced = re.compile(rf"service {name}: Slurm job (\d+) stayed PENDING")
    with reloaded_with(orchestrator, "stuck_job_timeout", str(STUCK_JOB_TIMEOUT)):
        with node_taken("dn1", "bob", slurm_cluster.datanode_partition):
            reserve(orchestrator, name, location=["loc1"])
            st = wait_status(orchestrator, name, "STAGEDIN")  # bound, pending
            first = int(re.search(r"Slurm job (\d+) pending", st["detail"]).group(1))
            poll_until(lambda: replaced.search(orchestrator.log()),
                       f"service {name}: job {first} replaced", STUCK_JOB_TIMEOUT + 60, 0.5,
                       last=lambda: orchestrator.log()[-3000:])
        st = wait_status(orchestrator, name, "ALLOCATED", timeout=120)
    log = orchestrator.log()
    olds = [int(j) for j in replaced.findall(log)]
    assert olds[0] == first and f"[recovered {len(olds)} time" in st["detail"], st
    assert f"Slurm job {olds[-1]} stayed PENDING" in st["detail"]
    [live] = [j for j in client.jobs() if j.name == name and j.is_active]
    assert live.job_id not in olds and live.user == "alice" and live.nodes == ("dn1",)
    assert re.findall(rf"reservation {name} bound by job (\d+)", log) == \
        [str(j) for j in [*olds, live.job_id]]  # each job bound once, the live one last
    # Each old job's teardown (its cancel) is refused: it bound nothing any more. Slurm
    # runs that teardown when it gets to it, which may be after the new job is up, or
    # 24.11 kills it (minicluster.teardown_killed); either way, the teardown the plugin
    # sends releases nothing.
    teardowns = poll_until(
        lambda: re.findall(rf" DELETE /v2\.0\.0/server/allocation/{name} (\d{{3}}) ",
                           orchestrator.log())
        or (all(teardown_killed(old, since) for old in olds) and ["killed"]),
        f"the teardown of {name}'s replaced job", 90, 0.5,
        last=lambda: orchestrator.log()[-3000:])
    assert "200" not in teardowns, teardowns
    for old in olds:
        code, answer = orchestrator.delete(f"/server/allocation/{name}?job_id={old}")
        assert code == 403 and answer["field"] == "job_id", answer  # releases nothing
        code, answer = orchestrator.get(
            f"/server/allocation/{name}?job_id={old}&uid={pwd.getpwnam('alice').pw_uid}")
        assert code == 403 and answer["field"] == "job_id", answer  # never binds again
    metrics = urllib.request.urlopen(  # noqa: S310 - http://127.0.0.1:8080
        f"{orchestrator.url}/metrics", timeout=10).read()
    assert re.search(rb"^wfm_service_jobs_replaced_total [1-9]", metrics, re.M), metrics
    release(orchestrator, name)
    wait_status(orchestrator, name, "STOPPED")
    poll_until(lambda: free_cores(orchestrator, "dn1") == before, "dn1's cores free", 60, 0.5)
    poll_until(lambda: not [j for j in client.jobs() if j.name == name and j.is_active],
               f"no job of {name} left", 90, 0.5)


def test_a_second_job_carrying_a_services_tag_is_cancelled_and_the_recorded_one_kept(
        orchestrator, slurm_cluster, client, job_factory):
    """The late POST of a former leader paused past its lease (docs/ha.md "Slurm
    submissions"): once the service runs, a second job carrying its tag, as its user, on
    its partition and node, with its wfm_service directive, is submitted behind the
    orchestrator's back. The orchestrator cancels it; the recorded job keeps running, the
    service stays ALLOCATED and keeps its cores (the second job binds and frees nothing)."""
    name = unique("dup")
    reserve(orchestrator, name)
    wait_status(orchestrator, name, "ALLOCATED")
    [ours] = [j for j in client.jobs() if j.name == name and j.is_active]
    node = ours.nodes[0]
    held = free_cores(orchestrator, node)
    spec = JobSpec(name=name, command=["/bin/sleep", "300"],
                   partition=slurm_cluster.datanode_partition, nodes=[node], cpus_per_node=1,
                   memory_per_node=1, comment=ours.comment, bb=[service_directive(name)])
    second = job_factory(spec, user="alice")
    cancelled = f"service {name}: cancelling Slurm job {second} "
    poll_until(lambda: cancelled in orchestrator.log(), f"job {second} cancelled", 60, 0.5,
               last=lambda: orchestrator.log()[-3000:])
    [line] = [x for x in orchestrator.log().splitlines() if cancelled in x]
    assert f"not its recorded job {ours.job_id}" in line, line
    poll_until(lambda: (j := client.job(second)) is None or j.is_terminal,
               f"job {second} ended", 90, 0.5, last=lambda: client.job(second))
    # Its teardown, if Slurm ran it by now, released nothing; nor did anything else.
    assert " 200 " not in " ".join(re.findall(
        rf" DELETE /v2\.0\.0/server/allocation/{name} \d{{3}} ", orchestrator.log()))
    status = wait_status(orchestrator, name, "ALLOCATED")
    assert f"Slurm job {ours.job_id} running" in status["detail"], status
    assert client.job(ours.job_id).state == "RUNNING"
    assert free_cores(orchestrator, node) == held
    assert [j.job_id for j in client.jobs() if j.name == name and j.is_active] == [ours.job_id]
    metrics = urllib.request.urlopen(  # noqa: S310 - http://127.0.0.1:8080
        f"{orchestrator.url}/metrics", timeout=10).read()
    assert re.search(rb"^wfm_service_jobs_duplicate_cancelled_total [1-9]", metrics, re.M)
    release(orchestrator, name)
    wait_status(orchestrator, name, "STOPPED")
