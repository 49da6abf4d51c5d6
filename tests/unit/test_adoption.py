"""Adoption after a restart (#15 item 3): a job carrying our tag is adopted only if it runs
as the record's user on the expected partition; a look-alike is logged and never adopted,
and the orchestrator submits its own job. Services carry a random nonce in their tag."""

from __future__ import annotations

import logging

from wfm_orchestrator.service_job import job_tag
from wfm_orchestrator.steps import job_tag as step_tag
from wfm_orchestrator.store import MIGRATIONS, Store

from ..conftest import STEP_BODY, connect_db, sqlite_db_as_before
from ..fake_slurm import FakeServices, FakeSlurm

NAME = "alice_s_sbb"  # the world's reservation (conftest SBB)


def crashed_before_storing_the_id(world):
    """A reserved service whose job id was never stored, and the orchestrator restarted."""
    rec = world.reserve()
    return rec, world.sm.job(rec.name)


def restart_beside(world, caplog, user, partition):
    """A job carrying the service's tag, of ``user`` on ``partition``, then a restart and a
    follower cycle (warnings captured): the record and the job as first stored."""
    rec, job = crashed_before_storing_the_id(world)
    world.slurm.put(555, NAME, job.tag, "RUNNING", user=user, partition=partition)
    world.restart()
    with caplog.at_level(logging.WARNING, logger="wfm_orchestrator.follower"):
        world.sm.reconcile()
    return rec, job


# --- services -------------------------------------------------------------------


def test_service_look_alike_of_another_user_is_not_adopted(world, caplog):
    rec, job = restart_beside(world, caplog, user="mallory", partition="data")
    [(spec, user, _)] = world.slurm.submitted  # the orchestrator submitted its own job
    assert (spec.comment, user) == (job.tag, "alice")
    assert world.sm.job(NAME).job_id not in (None, 555)
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1
    assert "Slurm job 555 of user 'mallory'" in warning[0].getMessage()
    assert f"service {NAME}" in warning[0].getMessage()
    assert 555 not in world.slurm.cancelled_ids  # someone else's job: left alone


def test_service_look_alike_on_another_partition_is_not_adopted(world, caplog):
    rec, job = restart_beside(world, caplog, user="alice", partition="compute")
    assert len(world.slurm.submitted) == 1
    assert world.sm.job(NAME).job_id not in (None, 555)
    assert "partition 'compute'" in caplog.text and "expected user 'alice', partition " \
        "'data'" in caplog.text


def test_service_job_is_adopted_beside_a_look_alike(world, caplog):
    """A copy of the tag cannot hide our job: the one of the right user is adopted."""
    rec, job = crashed_before_storing_the_id(world)
    world.slurm.put(554, NAME, job.tag, "RUNNING", user="mallory", partition="data")
    world.slurm.put(555, NAME, job.tag, "RUNNING", user="alice", partition="data")
    world.slurm.put(556, NAME, job.tag, "RUNNING", user="mallory", partition="data")
    world.restart()
    with caplog.at_level(logging.WARNING, logger="wfm_orchestrator.follower"):
        world.sm.reconcile()
    assert world.slurm.submitted == []
    assert world.sm.job(NAME).job_id == 555
    assert "Slurm job 554 of user 'mallory'" in caplog.text
    assert "Slurm job 556 of user 'mallory'" in caplog.text


def test_service_tag_carries_a_fresh_unguessable_nonce_per_record(world):
    rec, job = crashed_before_storing_the_id(world)
    assert len(job.nonce) == 16 and int(job.nonce, 16) >= 0
    assert job.tag == f"wfm-orchestrator:service:{NAME}:{rec.seq}:{job.nonce}"
    # The tag without the nonce (guessable from the name and seq) is not adopted.
    world.slurm.put(555, NAME, job_tag(NAME, rec.seq), "RUNNING", partition="data")
    world.restart()
    assert world.sm.job(NAME).nonce == job.nonce  # stored with the record
    world.sm.reconcile()
    assert world.sm.job(NAME).job_id != 555 and len(world.slurm.submitted) == 1
    world.rm.release(NAME)
    again = world.reserve()
    assert again.seq != rec.seq and world.sm.job(NAME).nonce not in ("", job.nonce)


def test_service_job_id_reused_by_another_user_is_not_ours(world, caplog):
    """The by-id check: Slurm lists our stored id as another user's job (the id was
    reused after slurmctld lost ours): not followed as ours, submitted again."""
    world.reserve()
    world.sm.reconcile()
    assert world.sm.job(NAME).job_id == 100
    world.slurm.put(100, NAME, world.sm.job(NAME).tag, "PENDING", user="mallory",
                    partition="data")
    with caplog.at_level(logging.WARNING):
        world.sm.reconcile()
    assert world.sm.job(NAME).job_id is None
    assert "Slurm job 100 of user 'mallory'" in caplog.text
    assert "Slurm lost job 100 before it started; submitting again" in caplog.text
    world.sm.reconcile()
    assert world.sm.job(NAME).job_id == 101
    assert [u for _, u, _ in world.slurm.submitted] == ["alice", "alice"]


def test_a_running_service_job_whose_id_names_another_job_is_lost_and_says_so(world):
    """After the service job ran, Slurm lists its id as another user's job: ours is lost
    now, and the status says why (not "no longer known to Slurm": a job is listed)."""
    world.reserve()
    world.sm.reconcile()
    world.slurm.set_state(100, "RUNNING", nodes=("dn1",))
    world.sm.reconcile()
    world.slurm.put(100, "other", "", "RUNNING", user="mallory", partition="compute")
    world.sm.reconcile()
    job = world.sm.job(NAME)
    assert job.state == "GONE"
    assert job.reason == "its job id now names another job (Slurm lost ours)"
    assert "its job id now names another job" in world.status()["detail"]


def test_service_job_on_another_partition_by_id_is_not_ours(world):
    world.reserve()
    world.sm.reconcile()
    world.slurm.put(100, NAME, world.sm.job(NAME).tag, "RUNNING", partition="compute")
    world.sm.reconcile()
    job = world.sm.job(NAME)
    assert job.state != "RUNNING" and job.job_id is None  # not ours: ours counts as lost


def forget_nonce(world):
    """Make the row look like one stored before nonces existed (migration 4's default)."""
    world.store.close()
    conn = connect_db(world.config.state_db)
    conn.execute("UPDATE service_job SET nonce = ''")
    conn.commit()
    conn.close()
    world.open()


def test_old_row_without_nonce_adopts_its_job_by_the_old_tag(world):
    rec = world.reserve()
    forget_nonce(world)
    assert world.sm.job(NAME).nonce == ""
    world.slurm.put(555, NAME, job_tag(NAME, rec.seq), "RUNNING", partition="data")
    world.sm.reconcile()
    assert world.slurm.submitted == []
    assert world.sm.job(NAME).job_id == 555
    assert job_tag(NAME, rec.seq) == f"wfm-orchestrator:service:{NAME}:{rec.seq}"


def test_old_row_without_nonce_submits_with_the_old_tag_and_follows_it(world):
    rec = world.reserve()
    forget_nonce(world)
    world.sm.reconcile()
    [(spec, _, _)] = world.slurm.submitted
    assert spec.comment == job_tag(NAME, rec.seq)
    world.slurm.set_state(100, "RUNNING")
    world.sm.reconcile()
    assert world.sm.job(NAME).state == "RUNNING"


def test_migration_gives_existing_service_job_rows_an_empty_nonce(tmp_path):
    path = str(tmp_path / "old.db")
    conn = sqlite_db_as_before(path, len(MIGRATIONS) - 1)
    conn.execute("INSERT INTO service_job (name, seq, job_id, updated) VALUES ('s', 3, 42, 1.0)")
    conn.close()
    store = Store(path)
    try:
        from wfm_orchestrator.repositories import service_jobs
        [job] = service_jobs.load_all(store)
    finally:
        store.close()
    assert (job.name, job.job_id, job.nonce, job.tag) == ("s", 42, "", job_tag("s", 3))


# --- steps ------------------------------------------------------------------------


def launched(make):
    """A step launched, its services usable, not yet submitted: (manager, slurm, tag of)."""
    slurm, services = FakeSlurm(cancel_ends_jobs=True), FakeServices()
    m = make(slurm, services)
    m.launch(dict(STEP_BODY))
    launch_id = m.step(STEP_BODY["name"]).launch_id
    services.usable()
    return m, slurm, lambda key: step_tag(launch_id, key)


def test_step_look_alike_of_a_later_job_by_another_user_is_not_adopted(env, caplog):
    """The launch id is public once the first mover is queued; a copy of the step
    job's tag by another user is not adopted: the step submits its own."""
    config, make = env
    m, slurm, tag = launched(make)
    slurm.put(900, STEP_BODY["name"], tag("main"), "PENDING", user="mallory",
              partition="compute")
    with caplog.at_level(logging.WARNING, logger="wfm_orchestrator.follower"):
        m.reconcile()
    jobs = m.jobs(STEP_BODY["name"])
    assert jobs["main"].job_id not in (None, 900)
    assert slurm.specs[jobs["main"].job_id].comment == tag("main")
    assert len(slurm.specs) == 4
    assert f"step {STEP_BODY['name']} (main): Slurm job 900 of user 'mallory'" in caplog.text
    # The stage-out mover depends on our job, not the look-alike.
    out = slurm.specs[jobs["dm:out"].job_id]
    assert out.dependencies[0].job_ids == (jobs["main"].job_id,)


def test_step_look_alike_on_another_partition_is_not_adopted(env, caplog):
    config, make = env
    m, slurm, tag = launched(make)
    slurm.put(900, "x", tag("dm:in1"), "RUNNING", user="alice", partition="compute")
    with caplog.at_level(logging.WARNING, logger="wfm_orchestrator.follower"):
        m.reconcile()
    assert m.jobs(STEP_BODY["name"])["dm:in1"].job_id not in (None, 900)
    assert "Slurm job 900 of user 'alice' on partition 'compute'" in caplog.text


def test_step_job_of_the_right_user_and_partition_is_adopted(env, caplog):
    config, make = env
    m, slurm, tag = launched(make)
    slurm.put(899, "x", tag("dm:in1"), "RUNNING", user="mallory", partition="data")
    slurm.put(900, "x", tag("dm:in1"), "RUNNING", user="alice", partition="data")
    m.reconcile()
    assert m.jobs(STEP_BODY["name"])["dm:in1"].job_id == 900
    assert len(slurm.specs) == 3  # in2, main, out: in1 was adopted
    main = slurm.specs[m.jobs(STEP_BODY["name"])["main"].job_id]
    assert 900 in main.dependencies[0].job_ids


def test_step_job_id_reused_by_another_user_is_not_ours(env, caplog):
    config, make = env
    m, slurm, tag = launched(make)
    m.reconcile()
    main = m.jobs(STEP_BODY["name"])["main"].job_id
    slurm.put(main, STEP_BODY["name"], tag("main"), "RUNNING", user="mallory",
              partition="compute")
    with caplog.at_level(logging.WARNING, logger="wfm_orchestrator.follower"):
        m.reconcile()
    assert m.jobs(STEP_BODY["name"])["main"].state == "GONE"
    assert m.jobs(STEP_BODY["name"])["main"].reason == \
        "its job id now names another job (Slurm lost ours)"  # not "no longer known"
    assert f"Slurm job {main} of user 'mallory'" in caplog.text
