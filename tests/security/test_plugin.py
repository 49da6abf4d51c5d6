"""Slurm users through the burst-buffer plugin: binding, using and tearing down another
user's reservation or service (docs/security.md §12).

alice writes real batch scripts naming bob's service in ``#BB_LUA`` lines and submits
them with real ``sbatch``; the plugin installed in the mini-cluster runs their setup and
teardown against the session orchestrator (127.0.0.1:8080). Slurm accepts the job at
submission (``slurm_bb_job_process`` runs inside slurmctld and makes no network call) and
holds it when setup is refused, with the plugin's message naming the rule.
"""

from __future__ import annotations

import os
import re

import pytest

from tests.integration.minicluster import (
    SLURMCTLD_LOG,
    node_taken,
    slurmctld_log_since,
    teardown_killed,
)
from tests.integration.orchestrator import reloaded_with
from tests.poll import poll_until

from .conftest import (
    ALICE,
    BOB,
    cancel,
    job_info,
    live_job_of,
    placement_of,
    request,
    reserve_body,
    roles,
    sbatch,
    squeue_as,
    uid_of,
    unique,
    wait_status,
)

pytestmark = pytest.mark.integration

SERVICE_JOB = """#!/bin/bash
#SBATCH --partition=data --nodes=1 --time=2 {extra}
#BB_LUA wfm_service name={name}
sleep 60
"""
STEP_JOB = """#!/bin/bash
#SBATCH --partition=compute --nodes=1 --time=2
#BB_LUA wfm_use name={name}
sleep 60
"""


def refusal_of(job_id: int, words: str, timeout: float = 90) -> str:
    """Wait until Slurm shows job ``job_id`` held by a failed burst-buffer setup whose
    message contains ``words``: that message (the job's Reason/SystemComment)."""
    seen: list[dict[str, str]] = [{}]

    def held() -> str | None:
        info = seen[0] = job_info(job_id)
        text = " ".join(info.get(k, "") for k in ("Reason", "SystemComment", "StateReason"))
        if words in text:
            assert info.get("JobState") in ("PENDING", "REQUEUE_HOLD", "SPECIAL_EXIT"), info
            return text
        return None

    return poll_until(held, f"job {job_id} held, its reason naming {words!r}", timeout, 0.5,
                      last=lambda: {k: seen[0].get(k) for k in
                                    ("JobState", "Reason", "SystemComment", "BurstBufferState")})


def log_end() -> int:
    """Where slurmctld's log ends now: lines after it are about jobs submitted later (job
    ids start again from 1 on each Slurm version's cluster, and both share the log)."""
    return os.path.getsize(SLURMCTLD_LOG)


def teardown_logged(job_id: int, since: int, timeout: float = 90,
                    or_killed: bool = False) -> str:
    """The plugin's teardown line about job ``job_id`` in slurmctld's log after offset
    ``since`` (Slurm tears a job down after a failed setup: burst_buffer.conf has
    ``Flags=TeardownFailure``); with ``or_killed``, "" if Slurm killed that teardown
    instead (minicluster.teardown_killed)."""
    pattern = re.compile(rf"job {job_id}\b.*(nothing released|reservation released|"
                         r"already released|reservation kept)")

    def logged() -> str | None:
        line = next((line for line in slurmctld_log_since(since).splitlines()
                     if pattern.search(line)), None)
        if line is None and or_killed and teardown_killed(job_id, since):
            return "killed"
        return line

    line = poll_until(logged, f"the plugin's teardown of job {job_id} logged", timeout, 0.5)
    return "" if line == "killed" else line


def test_a_job_of_alice_cannot_bind_bobs_reservation(orchestrator, bob_service, bob_things,
                                                     alice_jobs):
    """``#BB_LUA wfm_service name=<bob's>`` in alice's job: setup is refused (uid), the job
    is held naming the reservation and the rule; bob's reservation, job and datanodes are
    as they were."""
    before = bob_things()
    job = alice_jobs(SERVICE_JOB.format(name=bob_service, extra=""))
    assert job.returncode == 0, job.err  # accepted: ownership is checked at setup
    reason = refusal_of(job.job_id, "may not bind reservation")
    assert f"reservation {bob_service}" in reason and "belongs to another user" in reason
    assert bob_things() == before


def test_alices_teardown_does_not_release_bobs_reservation(orchestrator, bob_service,
                                                           bob_things, alice_jobs):
    """The job that named bob's reservation is torn down after its refused setup: the
    plugin releases nothing (the job is PENDING, held). Its DELETE, had it been sent (the
    teardown of a job that ended), names the job: the orchestrator's record says another
    job bound the reservation, 403 naming ``job_id``, nothing released. Slurm sends no
    DELETE for a held job, so the test sends the plugin's request for it, then cancels it."""
    before = bob_things()
    since = log_end()
    job = alice_jobs(SERVICE_JOB.format(name=bob_service, extra=""))
    refusal_of(job.job_id, "may not bind reservation")
    line = teardown_logged(job.job_id, since)
    assert "reservation released" not in line, line
    code, answer = orchestrator.delete(
        f"/server/allocation/{bob_service}?job_id={job.job_id}")
    assert code == 403 and answer["field"] == "job_id", answer
    assert f"job {job.job_id} did not bind reservation {bob_service}" in answer["message"]
    assert f"bound by job {before.job_id}" in answer["message"]
    cancel(job.job_id)
    assert bob_things() == before
    assert orchestrator.get(f"/ephemeralservice/status/{bob_service}")[1]["status"] \
        == "ALLOCATED"


def test_bobs_own_other_job_cannot_take_the_datanodes_of_his_service(orchestrator,
                                                                     bob_service, bob_things):
    """Only the service job the orchestrator submitted binds a service it starts itself;
    bob's second job naming his own service is held (field job_id)."""
    before = bob_things()
    job = sbatch(BOB, SERVICE_JOB.format(name=bob_service, extra=""))
    assert job.returncode == 0, job.err
    try:
        reason = refusal_of(job.job_id, "may not bind reservation")
        assert "not the service job the orchestrator submitted" in reason, reason
        assert f"job {before.job_id}" in reason  # the one that did bind it is named
    finally:
        cancel(job.job_id)
    assert bob_things() == before


def test_a_look_alike_with_the_copied_tag_cannot_bind(orchestrator, bob_service, bob_things,
                                                      alice_jobs):
    """alice copies the tag of bob's service job from squeue into her own job's comment:
    the tag proves nothing; her job is held, bob's unchanged."""
    before = bob_things()
    tags = [line.split("|", 1)[1] for line in squeue_as(ALICE, "%i|%k").splitlines()
            if line.split("|", 1)[0] == before.job_id]
    assert tags and tags[0].startswith("wfm-orchestrator:service:"), tags
    job = alice_jobs(SERVICE_JOB.format(name=bob_service, extra=f"--comment={tags[0]}"))
    assert job.returncode == 0, job.err
    reason = refusal_of(job.job_id, "may not bind reservation")
    assert "belongs to another user" in reason
    assert job_info(job.job_id).get("Comment", "").strip() == tags[0]  # a faithful copy
    assert bob_things() == before


def test_a_job_of_alice_cannot_use_bobs_service(orchestrator, bob_service, bob_things,
                                                alice_jobs):
    """``#BB_LUA wfm_use name=<bob's>``: setup asks the status with alice's uid and is
    answered as for a service that does not exist; the job is held with the rule."""
    before = bob_things()
    job = alice_jobs(STEP_JOB.format(name=bob_service))
    assert job.returncode == 0, job.err
    reason = refusal_of(job.job_id, "is not usable")
    assert "a job may use only its own user's services" in reason, reason
    assert bob_things() == before


def test_alice_learns_nothing_of_bobs_services_by_probing_names(orchestrator, bob_service,
                                                                 bob_things, alice_jobs):
    """Naming bob's service or one that does not exist gives alice the same reason."""
    before = bob_things()
    missing = unique("none")
    reasons = []
    for name in (bob_service, missing):
        job = alice_jobs(STEP_JOB.format(name=name))
        assert job.returncode == 0, job.err
        reasons.append(refusal_of(job.job_id, "is not usable").replace(name, "NAME"))
    assert re.sub(r"\d+", "N", reasons[0]) == re.sub(r"\d+", "N", reasons[1])
    assert bob_things() == before


def test_the_plugins_token_must_say_which_job_and_uid(kc_server):
    """The burst-buffer role without ``job_id``/``uid`` (an old plugin, or its token used
    by hand): 400 naming the parameter; bob's reservation stays FREE; with them, a job of
    alice's uid is refused."""
    port, tokens, key, name = kc_server
    bb = tokens.make(key, preferred_username="slurm-plugin", **roles("burst-buffer"))
    admin = tokens.make(key, preferred_username="ops", **roles("admin"))
    path = f"/v2.0.0/server/allocation/{name}"
    for method, query, field in (("GET", "", "job_id"), ("GET", "?job_id=7", "uid"),
                                 ("DELETE", "", "job_id")):
        code, _, answer = request(port, method, path + query, bb)
        assert code == 400 and answer["field"] == field, (method, query, code, answer)
    code, _, answer = request(port, "GET", f"{path}?job_id=7&uid={uid_of(ALICE)}", bb)
    assert code == 403 and "belongs to another user" in answer["message"], answer
    status = request(port, "GET", f"/v1.0.0/ephemeralservice/status/{name}", admin)[2]
    assert status["status"] == "STAGINGIN" and status["user"] == BOB, status


def test_refused_jobs_leave_bob_able_to_bind_his_next_service(orchestrator, alice_jobs):
    """After alice's jobs named bob's reservation (held, then torn down), bob's own service
    job still binds it: nothing alice did released or took it."""
    name = unique("next")
    code, answer = orchestrator.post("/ephemeralservice/reserve", reserve_body(name, BOB))
    assert code == 200, answer
    try:
        since = log_end()
        job = alice_jobs(SERVICE_JOB.format(name=name, extra=""))
        refusal_of(job.job_id, "may not bind reservation")
        teardown_logged(job.job_id, since)
        cancel(job.job_id)
        wait_status(orchestrator, name, "ALLOCATED")
        assert live_job_of(name)["UserId"].startswith(f"{BOB}(")
    finally:
        orchestrator.delete(f"/ephemeralservice/release/{name}")


def test_a_replaced_job_neither_binds_nor_releases_bobs_reservation(orchestrator,
                                                                    slurm_cluster):
    """alice's job takes dn1: bob's service job is set up (binds) and stays PENDING; after
    stuck_job_timeout the orchestrator replaces it. The old job's teardown (its cancel)
    releases nothing (403 ``job_id``: the plugin logs "nothing released"), its setup sent
    again as the plugin would binds nothing (403 ``job_id``); bob's reservation keeps its
    placement and his new job binds it once dn1 is free."""
    name = unique("stuckvictim")
    since = log_end()
    body = {**reserve_body(name, BOB), "location": ["loc1"]}
    try:
        with reloaded_with(orchestrator, "stuck_job_timeout", "30"), \
                node_taken("dn1", ALICE, slurm_cluster.datanode_partition):
            code, answer = orchestrator.post("/ephemeralservice/reserve", body)
            assert code == 200, answer
            st = wait_status(orchestrator, name, "STAGEDIN")  # bound, kept PENDING
            old = int(re.search(r"Slurm job (\d+) pending", st["detail"]).group(1))
            state, seq, placement = placement_of(orchestrator, name)
            assert state == "ALLOCATED"
            line = teardown_logged(old, since, timeout=120, or_killed=True)  # replaced
            if line:  # Slurm ran it (24.11 may kill it instead: teardown_killed)
                assert "nothing released" in line and "reservation released" not in line, line
            # Ran or not, the teardown the plugin sends for the old job releases nothing.
            code, answer = orchestrator.delete(f"/server/allocation/{name}?job_id={old}")
            assert code == 403 and answer["field"] == "job_id", answer
            # Unbound before the cancel, never released (the new job may have bound it).
            now, *kept = placement_of(orchestrator, name)
            assert now in ("FREE", "ALLOCATED") and kept == [seq, placement], (now, kept)
            code, answer = orchestrator.get(
                f"/server/allocation/{name}?job_id={old}&uid={uid_of(BOB)}")
            assert code == 403 and answer["field"] == "job_id", answer
            assert "not the service job the orchestrator submitted" in answer["message"]
        wait_status(orchestrator, name, "ALLOCATED")
        assert placement_of(orchestrator, name) == ("ALLOCATED", seq, placement)
        live = live_job_of(name)
        assert live["UserId"].startswith(f"{BOB}(") and int(live["JobId"]) != old
    finally:
        orchestrator.delete(f"/ephemeralservice/release/{name}")
