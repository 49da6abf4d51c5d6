"""Adoption after a restart: look-alike jobs (docs/security.md §10).

The session orchestrator is crashed at a fault point (``WFM_FAULT``, as the reliability
suite does) while it submits bob's service's job; alice reads what ``squeue`` shows every
user (the job's tag in its comment) and submits her own job carrying it, with real
``sbatch``; the orchestrator is started again. It must adopt bob's job only, log alice's
as a look-alike (job id, user, partition, and the expected ones), never cancel it, and
bob's service must end ALLOCATED with a job of bob's.
"""

from __future__ import annotations

import re

import pytest

from tests.conftest import connect_db
from tests.poll import poll_until
from tests.reliability.cluster import kill9, launch, restart, wait_answering, wait_exit
from wfm_orchestrator.service_job import TAG_PREFIX

from .conftest import (
    ALICE,
    BOB,
    devcluster_run,
    job_info,
    job_user,
    launch_step,
    release,
    reserve_body,
    service_status,
    squeue_as,
    stage_in,
    unique,
    wait_status,
    wait_step,
)

pytestmark = pytest.mark.integration

LOOK_ALIKE = "#!/bin/sh\n#SBATCH -t 10\n#SBATCH -o /dev/null\n#SBATCH -D /tmp\nsleep 600\n"
# A look-alike queued before bob's job starts is held: queued and visible to the
# orchestrator's adoption like any job, without taking the datanode's cores that bob's
# service job needs (running, it could keep bob's job pending on dn1 for minutes).
HELD = "--hold"


def crash_while_reserving(orchestrator, point: str) -> str:
    """bob's reservation, the orchestrator exiting at ``point`` while it submits the
    service's job: the service's name."""
    name = unique("adopt")
    restart(orchestrator, fault=point)
    try:
        code, answer = orchestrator.post("/ephemeralservice/reserve", reserve_body(name, BOB))
        assert code == 200, answer
    except OSError:
        pass  # the fault point won the race with the answer: the reservation is durable
    assert wait_exit(orchestrator) == 137, orchestrator.log()[-3000:]
    return name


def tag_as_alice_sees_it(name: str) -> tuple[str, str]:
    """(job id, tag) of bob's service job, read as alice with squeue (comment = %k)."""
    lines = [line.split("|") for line in squeue_as(ALICE, "%i|%j|%u|%k").splitlines()]
    found = [(i, k) for i, j, u, k in lines if j == name and u == BOB]
    assert len(found) == 1, f"bob's job of {name} as alice sees it: {lines}"
    assert found[0][1].startswith(f"{TAG_PREFIX}{name}:"), found
    return found[0]


def stored_job_id(orchestrator, name: str) -> int | None:
    conn = connect_db(orchestrator.state_db)
    try:
        row = conn.execute("SELECT job_id FROM service_job WHERE name = ?", (name,)).fetchone()
    finally:
        conn.close()
    return row[0] if row else None


def start_again(orchestrator) -> int:
    """Start the orchestrator normally; where its log of this start begins."""
    mark = len(orchestrator.log())
    launch(orchestrator)
    wait_answering(orchestrator)
    return mark


def look_alike_logged(log: str, name: str, job_id: int, partition: str) -> None:
    assert re.search(rf"service {name}: Slurm job {job_id} of user 'alice' on partition "
                     rf"'{partition}' carries its tag but is not its job \(expected user "
                     rf"'bob', partition 'data'\): not adopted", log), log[-3000:]


def beside_a_look_alike(orchestrator, alice_jobs, partition: str) -> None:
    """bob's job submitted, its id not stored (service_after_submit); alice copies its tag
    into a job of hers on ``partition``; restart: bob's job adopted, hers logged and left."""
    name = crash_while_reserving(orchestrator, "service_after_submit")
    try:
        bob_job, tag = tag_as_alice_sees_it(name)
        copy = alice_jobs(LOOK_ALIKE, HELD, "-p", partition, f"--comment={tag}", "-J", name)
        assert copy.job_id is not None, copy.err
        mark = start_again(orchestrator)
        wait_status(orchestrator, name, "ALLOCATED")
        assert stored_job_id(orchestrator, name) == int(bob_job)
        log = orchestrator.log()[mark:]
        assert f"adopting Slurm job {bob_job}" in log, log[-3000:]
        look_alike_logged(log, name, copy.job_id, partition)
        info = job_info(copy.job_id)
        assert job_user(info) == ALICE and info["JobState"] in ("PENDING", "RUNNING"), info
        assert job_user(job_info(int(bob_job))) == BOB
    finally:
        if orchestrator.proc.poll() is not None:
            start_again(orchestrator)
        release(orchestrator, name)


def test_a_copied_tag_is_not_adopted_in_place_of_bobs_job(orchestrator, alice_jobs,
                                                          bob_things):
    """After a crash between submitting bob's job and storing its id, alice's job with a
    copy of its tag (read with squeue) on the same partition: bob's job is adopted, hers
    logged as a look-alike naming user 'alice' (expected 'bob'), not cancelled."""
    before = bob_things()
    beside_a_look_alike(orchestrator, alice_jobs, "data")
    assert bob_things() == before


def test_a_copied_tag_on_another_partition_is_not_adopted(orchestrator, alice_jobs,
                                                          bob_things):
    """The same with alice's copy on ``compute``: logged naming partition 'compute'
    (expected 'data'), never adopted."""
    before = bob_things()
    beside_a_look_alike(orchestrator, alice_jobs, "compute")
    assert bob_things() == before


def test_a_tag_guessed_before_bobs_job_is_queued_matches_nothing(orchestrator, alice_jobs,
                                                                bob_things):
    """The orchestrator crashes after storing bob's reservation, before submitting its job
    (service_before_submit): alice queues look-alikes with every tag she can build from the
    name and the seq (even knowing the seq), with and without a made-up nonce. After the
    restart the orchestrator submits bob's job with a fresh 16-hex-digit nonce that none of
    hers carries; none of hers is adopted or even looked at."""
    before = bob_things()
    name = crash_while_reserving(orchestrator, "service_before_submit")
    try:
        guesses = [f"{TAG_PREFIX}{name}:{seq}{nonce}" for seq in (0, 1, 2)
                   for nonce in ("", ":0000000000000000")]
        copies = [alice_jobs(LOOK_ALIKE, HELD, "-p", "data", f"--comment={tag}", "-J", name)
                  for tag in guesses]
        assert all(c.job_id is not None for c in copies), [c.err for c in copies]
        mark = start_again(orchestrator)
        wait_status(orchestrator, name, "ALLOCATED")
        bob_job, tag = tag_as_alice_sees_it(name)
        assert re.fullmatch(rf"{re.escape(TAG_PREFIX + name)}:\d+:[0-9a-f]{{16}}", tag), tag
        assert tag not in guesses
        assert stored_job_id(orchestrator, name) == int(bob_job)
        assert int(bob_job) not in [c.job_id for c in copies]
        log = orchestrator.log()[mark:]
        for c in copies:
            assert f"Slurm job {c.job_id} " not in log, log[-3000:]
            assert job_info(c.job_id)["JobState"] in ("PENDING", "RUNNING")
    finally:
        if orchestrator.proc.poll() is not None:
            start_again(orchestrator)
        release(orchestrator, name)
    assert bob_things() == before


def test_alices_job_under_bobs_stored_job_id_is_not_followed(orchestrator, alice_jobs,
                                                             bob_things):
    """Row "a job of theirs under our stored job id (reused after slurmctld lost ours)".

    Making slurmctld lose a job and hand its id to another would mean wiping the shared
    mini-cluster's state; the nearest real thing: while the orchestrator is down, bob's
    job is gone (cancelled, as a lost job is) and the stored id is made to name alice's
    job carrying the copied tag (what id reuse looks like from the orchestrator's side),
    then a real restart. alice's job is logged as not the service's, never followed as
    bob's (the service does not take its state) and never cancelled."""
    before = bob_things()
    name = unique("reused")
    code, answer = orchestrator.post("/ephemeralservice/reserve", reserve_body(name, BOB))
    assert code == 200, answer
    try:
        wait_status(orchestrator, name, "ALLOCATED")
        bob_job, tag = tag_as_alice_sees_it(name)
        copy = alice_jobs(LOOK_ALIKE, "-p", "data", f"--comment={tag}", "-J", name)
        assert copy.job_id is not None, copy.err
        kill9(orchestrator)
        devcluster_run("scancel", bob_job)
        conn = connect_db(orchestrator.state_db)
        try:
            with conn:
                conn.execute("UPDATE service_job SET job_id = ? WHERE name = ?",
                             (copy.job_id, name))
        finally:
            conn.close()
        mark = start_again(orchestrator)
        poll_until(lambda: "carries its tag but is not its job" in orchestrator.log()[mark:],
                   f"alice's job {copy.job_id} logged as not the service's", 60, 0.3,
                   last=lambda: orchestrator.log()[mark:][-3000:])
        look_alike_logged(orchestrator.log()[mark:], name, copy.job_id, "data")
        # Not followed as the service's: alice's running job does not make it ALLOCATED
        # (bob's job is gone: the plugin's teardown, once the orchestrator answers again,
        # stops the service).
        # The id counts as lost (services.py: "not ours"); its detail then says "Slurm job
        # N ended GONE (no longer known to Slurm)" although alice's job N still runs.
        st = service_status(orchestrator, name)
        assert st["status"] != "ALLOCATED", st
        assert job_info(copy.job_id)["JobState"] in ("PENDING", "RUNNING"), \
            job_info(copy.job_id)
    finally:
        if orchestrator.proc.poll() is not None:
            start_again(orchestrator)
        # bob's cancelled job's teardown (its job bound the reservation) may have released
        # it already, as soon as the orchestrator answered again: then nothing is left.
        code, answer = orchestrator.delete(f"/ephemeralservice/release/{name}")
        assert code == 200 or "already released" in str(answer), (code, answer)
    assert bob_things() == before


def test_a_copied_launch_id_in_a_look_alike_of_bobs_step_job_is_not_adopted(
        orchestrator, bob_service, bob_files, alice_jobs, bob_things):
    """bob's step crashes the orchestrator right after its stage-in mover is queued
    (step_after_submit): the mover's tag, and so the step's launch id, is public. alice
    submits a look-alike of the step's later job (``...:<launch id>:main``) on ``compute``,
    the partition of that job, before the orchestrator submits it. After the restart the
    mover is adopted, alice's job is logged as a look-alike (user 'alice', expected 'bob')
    and left alone, and the step runs its own job as bob to COMPLETED."""
    before = bob_things(bob_files)
    restart(orchestrator, fault="step_after_submit")
    step = unique("step")
    try:
        launch_step(orchestrator, BOB, bob_service,
                    [stage_in("dm_in", "NVMe", "HDD:data/results.h5")],
                    command="--wrap 'sleep 1'", name=step)
    except OSError:
        pass  # the fault point won the race with the answer: the launch is durable
    assert wait_exit(orchestrator) == 137, orchestrator.log()[-3000:]
    try:
        lines = [line.split("|") for line in squeue_as(ALICE, "%i|%u|%k").splitlines()]
        movers = [k for _, u, k in lines if u == BOB and k.endswith(":dm:dm_in")
                  and k.startswith("wfm-orchestrator:step:")]
        assert len(movers) == 1, lines
        main = movers[0].removesuffix("dm:dm_in") + "main"
        copy = alice_jobs(LOOK_ALIKE, "-p", "compute", f"--comment={main}")
        assert copy.job_id is not None, copy.err
        mark = start_again(orchestrator)
        st = wait_step(orchestrator, step, timeout=180)
        log = orchestrator.log()[mark:]
        assert st["status"] == "COMPLETED", f"{st}\n{log[-3000:]}"
        assert re.search(rf"Slurm job {copy.job_id} of user 'alice' on partition 'compute' "
                         r"carries its tag but is not its job \(expected user 'bob', "
                         r"partition 'compute'\): not adopted", log), log[-3000:]
        assert f"adopting Slurm job {copy.job_id}" not in log
        assert job_info(copy.job_id)["JobState"] in ("PENDING", "RUNNING")
        ran = [j for j in devcluster_run("squeue", "-h", "-a", "-t", "all", "-o",
                                         "%i|%u|%k").stdout.splitlines()
               if j.endswith(f"|{main}")]
        users = sorted(j.split("|")[1] for j in ran)
        assert users == ["alice", "bob"], ran  # bob's own job ran beside alice's copy
    finally:
        if orchestrator.proc.poll() is not None:
            start_again(orchestrator)
    assert bob_things(bob_files) == before
