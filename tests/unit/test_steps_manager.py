"""The step worker with a fake Slurm: order, dependencies, adoption, failures, abort, status."""

from __future__ import annotations

import pytest

from wfm_orchestrator.errors import Forbidden, InvalidRequest, NotFound, RequestFailed
from wfm_orchestrator.steps import derive_status, parse_launch

from ..conftest import STEP_BODY as BODY
from ..conftest import connect_db
from ..fake_slurm import FakeServices, FakeSlurm


def test_jobs_are_submitted_in_order_with_dependencies_and_directives(env):
    """start movers, then the step job afterok on them with wfm_use, then stop movers
    afterany on the step job; all as the user, tagged, on the right partitions."""
    config, make = env
    slurm, services = FakeSlurm(cancel_ends_jobs=True), FakeServices()
    m = make(slurm, services)
    assert m.launch(dict(BODY))[0]["status"] == "PENDING"
    services.usable(status="STAGINGIN")
    m.reconcile()
    assert slurm.specs == {}
    assert "waiting for service alice_s1_sbb (STAGINGIN" in m.status(BODY["name"])["detail"]
    services.usable()
    m.reconcile()
    (i1, s1), (i2, s2), (i3, s3), (i4, s4) = sorted(slurm.specs.items())
    assert [s.name for s in (s1, s2, s3, s4)] == [
        "alice_s1_step_0.in1", "alice_s1_step_0.in2", "alice_s1_step_0", "alice_s1_step_0.out"]
    assert s1.partition == "data" and s3.partition == "compute"
    assert list(s1.command[-5:]) == ["copy", "HDD", "NVMe", "--", "data/*.h5"]
    assert list(s2.command[-4:]) == ["HDD", "NVMe", "--", "ref/*"]  # default source: HDD
    assert s1.environment["WFM_SOURCE_ROOT"] == "/tiers/hdd"
    assert s1.environment["WFM_PROGRESS_URL"] == "http://127.0.0.1:8080/v1.0.0/step/progress"
    assert s3.dependencies[0].type == "afterok" and s3.dependencies[0].job_ids == (i1, i2)
    assert [(d.verb, d.params) for d in s3.bb] == [
        ("wfm_use", (("name", "alice_s1_sbb"), ("hint", "RO")))]
    assert s3.tasks == 2 and s3.exclude == ["cn3", "cn4"] and s3.cwd == "/home/alice"
    assert s3.command[-1] == "data" and s3.environment["IN"] == "data"
    assert s4.dependencies[0].type == "afterany" and s4.dependencies[0].job_ids == (i3,)
    assert list(s4.command[-4:]) == ["NVMe", "HDD", "--", "results/**"]
    assert len({s.comment for s in (s1, s2, s3, s4)}) == 4


def test_status_follows_movers_progress_job_and_stage_out(env):
    config, make = env
    slurm, services = FakeSlurm(cancel_ends_jobs=True), FakeServices()
    services.usable()
    m = make(slurm, services)
    m.launch(dict(BODY))
    m.reconcile()
    i1, i2, main, out = sorted(slurm.specs)
    slurm.set_state(i1, "RUNNING")
    m.reconcile()
    # The mover sends the secret its job was given.
    m.progress({"step_name": BODY["name"], "datamover_name": "in1", "progress": "40%",
                "step_secret": slurm.specs[i1].environment["WFM_STEP_SECRET"]})
    st = m.status(BODY["name"])
    assert st["status"] == "PENDING" and "stage-in mover in1 running: 40%" in st["detail"]
    for j in (i1, i2):
        slurm.set_state(j, "COMPLETED", 0)
    slurm.set_state(main, "RUNNING")
    m.reconcile()
    assert m.status(BODY["name"])["status"] == "RUNNING"
    slurm.set_state(main, "COMPLETED", 0)
    slurm.set_state(out, "RUNNING")
    m.reconcile()
    st = m.status(BODY["name"])
    assert st["status"] == "STAGE_OUT" and "stage-out mover out running" in st["detail"]
    slurm.set_state(out, "COMPLETED", 0)
    m.reconcile()
    assert m.status(BODY["name"])["status"] == "COMPLETED"
    assert m.step(BODY["name"]).phase == "DONE"
    # Slurm forgets the jobs (MinJobAge): the step stays COMPLETED.
    slurm.jobs_by_id.clear()
    m.reconcile()
    assert m.status(BODY["name"])["status"] == "COMPLETED"


def test_failed_stage_in_cancels_the_step_job_and_stage_out(env):
    config, make = env
    slurm, services = FakeSlurm(cancel_ends_jobs=True), FakeServices()
    services.usable()
    m = make(slurm, services)
    m.launch(dict(BODY))
    m.reconcile()
    i1, i2, main, out = sorted(slurm.specs)
    m.progress({"step_name": BODY["name"], "datamover_name": "in1",
                "progress": "failed: no file matches",
                "step_secret": slurm.specs[i1].environment["WFM_STEP_SECRET"]})
    slurm.set_state(i1, "FAILED", 256)
    m.reconcile()
    assert set(slurm.cancelled_ids) >= {i2, main, out}
    m.reconcile()
    st = m.status(BODY["name"])
    assert st["status"] == "FAILED"
    assert "stage-in mover in1 failed" in st["detail"] and "no file matches" in st["detail"]
    assert "not run" in st["detail"]


def test_stage_out_failure_fails_a_completed_step(env):
    config, make = env
    slurm, services = FakeSlurm(cancel_ends_jobs=True), FakeServices()
    services.usable()
    m = make(slurm, services)
    m.launch(dict(BODY))
    m.reconcile()
    for j in sorted(slurm.specs)[:3]:
        slurm.set_state(j, "COMPLETED", 0)
    slurm.set_state(sorted(slurm.specs)[3], "FAILED", 1)
    m.reconcile()
    st = m.status(BODY["name"])
    assert st["status"] == "FAILED" and "stage-out mover out failed" in st["detail"]


@pytest.mark.parametrize("table,expected", [
    ({}, "service alice_s1_sbb is unknown"),
    ({"user": "bob", "status": "ALLOCATED"}, "belongs to another user"),
    ({"user": "alice", "status": "STOPPED"}, "is not usable (STOPPED"),
])
def test_unusable_services_fail_the_step_without_submitting(env, table, expected):
    config, make = env
    slurm, services = FakeSlurm(cancel_ends_jobs=True), FakeServices()
    if table:
        services.usable(**table)
    m = make(slurm, services)
    m.launch(dict(BODY))
    m.reconcile()
    st = m.status(BODY["name"])
    assert st["status"] == "FAILED" and expected in st["detail"]
    assert slurm.specs == {}


def test_abort_cancels_every_job_once_and_is_idempotent(env):
    config, make = env
    slurm, services = FakeSlurm(cancel_ends_jobs=True), FakeServices()
    services.usable()
    m = make(slurm, services)
    m.launch(dict(BODY))
    m.reconcile()
    assert m.abort(BODY["name"])[0]["message"] == "abort accepted"
    m.reconcile()
    assert sorted(slurm.cancelled_ids) == sorted(slurm.specs)
    assert m.abort(BODY["name"])[0]["message"] == "abort already requested"
    m.reconcile()
    assert sorted(slurm.cancelled_ids) == sorted(slurm.specs)  # not sent twice
    assert m.status(BODY["name"])["status"] == "CANCELLED"
    with pytest.raises(NotFound):
        m.abort("nobody_step")


def test_abort_before_submission_submits_nothing(env):
    config, make = env
    slurm, services = FakeSlurm(cancel_ends_jobs=True), FakeServices()
    m = make(slurm, services)
    m.launch(dict(BODY))
    m.abort(BODY["name"])
    services.usable()
    m.reconcile()
    assert slurm.specs == {}
    assert m.status(BODY["name"])["status"] == "CANCELLED"


def test_restart_adopts_jobs_submitted_before_the_crash(env):
    """Jobs found by their tag are adopted, not submitted again; the record survives."""
    config, make = env
    slurm, services = FakeSlurm(cancel_ends_jobs=True), FakeServices()
    services.usable()
    m = make(slurm, services)
    m.launch(dict(BODY))
    m.reconcile()
    first = dict(slurm.specs)
    m.store.close()
    # Lose the job ids (as if the crash came before they were stored).
    conn = connect_db(config.state_db)
    conn.execute("DELETE FROM step_job")
    conn.commit()
    conn.close()
    m2 = make(slurm, services)
    assert m2.step(BODY["name"]).phase == "SUBMITTED"
    # Back to WAITING as an interrupted submission would be:
    m2._steps[BODY["name"]] = m2._steps[BODY["name"]].__class__(
        **{**m2.step(BODY["name"]).__dict__, "phase": "WAITING"})
    m2.reconcile()
    assert slurm.specs == first
    assert {j.job_id for j in m2.jobs(BODY["name"]).values()} == set(first)


def test_launch_is_idempotent_per_name_and_refuses_another_request(env):
    config, make = env
    m = make()
    assert m.launch(dict(BODY))[0]["message"] == "step launch accepted"
    assert m.launch(dict(BODY))[0]["message"] == "step already launched"
    with pytest.raises(RequestFailed):
        m.launch({**BODY, "command": "--wrap true"})


def test_progress_for_unknown_step_or_mover_is_refused(env):
    config, make = env
    m = make()
    m.launch(dict(BODY))
    with pytest.raises(NotFound):
        m.progress({"step_name": "nope", "datamover_name": "in1", "progress": "1%"})
    secret = m.step(BODY["name"]).mover_secret
    with pytest.raises(NotFound):
        m.progress({"step_name": BODY["name"], "datamover_name": "nope", "progress": "1%",
                    "step_secret": secret})
    with pytest.raises(InvalidRequest):
        m.progress({"step_name": BODY["name"], "datamover_name": "in1", "progress": 3,
                    "step_secret": secret})


def test_the_step_secret_is_handed_to_its_mover_jobs_only(env):
    """Made at launch, unpredictable, in the movers' environment; never in what squeue
    shows (name, comment, command line), in the step job, in the status or in repr."""
    config, make = env
    slurm, services = FakeSlurm(cancel_ends_jobs=True), FakeServices()
    services.usable()
    m = make(slurm, services)
    m.launch(dict(BODY))
    m.launch({**BODY, "name": "alice_s1_step_1"})
    secret = m.step(BODY["name"]).mover_secret
    assert len(secret) >= 32 and secret != m.step("alice_s1_step_1").mover_secret
    m.reconcile()
    mine = [s for s in slurm.specs.values() if s.name.startswith(BODY["name"])]
    movers = [s for s in mine if s.name != BODY["name"]]
    assert len(movers) == 3 and all(s.environment["WFM_STEP_SECRET"] == secret for s in movers)
    for spec in mine:
        assert secret not in f"{spec.name} {spec.comment} {' '.join(spec.command)}"
    main = next(s for s in mine if s.name == BODY["name"])
    assert "WFM_STEP_SECRET" not in main.environment
    assert secret not in str(m.status(BODY["name"])) and secret not in repr(m.step(BODY["name"]))


def test_progress_without_the_steps_own_secret_is_forbidden(env):
    """Holding the shared mover token is not enough: no secret, a wrong one, another step's
    or a non-string one are refused, naming step_secret; the progress is not recorded."""
    config, make = env
    m = make()
    m.launch(dict(BODY))
    m.launch({**BODY, "name": "alice_s1_step_1"})
    other = m.step("alice_s1_step_1").mover_secret
    base = {"step_name": BODY["name"], "datamover_name": "in1", "progress": "forged 99%"}
    for extra in ({}, {"step_secret": ""}, {"step_secret": "guess"}, {"step_secret": other}):
        with pytest.raises(Forbidden) as e:
            m.progress({**base, **extra})
        assert e.value.field == "step_secret" and BODY["name"] in e.value.message
    with pytest.raises(InvalidRequest) as bad:
        m.progress({**base, "step_secret": 12})
    assert bad.value.field == "step_secret"
    assert "forged" not in m.status(BODY["name"])["detail"]
    assert all(not j.progress for j in m.jobs(BODY["name"]).values())


def test_the_step_secret_survives_a_restart_and_old_steps_have_none(env):
    """Stored with the step (a restart keeps accepting its movers); a step stored before
    the column existed has '' and every progress for it is refused."""
    config, make = env
    m = make()
    m.launch(dict(BODY))[1].wait()
    secret = m.step(BODY["name"]).mover_secret
    m.store.close()
    again = make()
    assert again.step(BODY["name"]).mover_secret == secret
    again.progress({"step_name": BODY["name"], "datamover_name": "in1", "progress": "1%",
                    "step_secret": secret})[1].wait()
    again.store.close()
    conn = connect_db(config.state_db)
    conn.execute("UPDATE step SET mover_secret = '' WHERE name = ?", (BODY["name"],))
    conn.commit()
    conn.close()
    with pytest.raises(Forbidden):
        make().progress({"step_name": BODY["name"], "datamover_name": "in1", "progress": "1%",
                         "step_secret": secret})


def test_status_lists_by_user(env):
    config, make = env
    m = make()
    m.launch(dict(BODY))
    m.launch({**BODY, "name": "bob_x_0", "user": "bob", "services": []})
    assert [s["name"] for s in m.statuses("bob")] == ["bob_x_0"]
    assert len(m.statuses()) == 2


ELEMENT_CASES = [
    ("HDD:../x", "'..' is not allowed"),
    ("/etc/passwd", "outside every tier root"),
    ("/tiers/hdd/../../etc/passwd", "outside every tier root"),
    ("NVMe:a", "the source tier is the target"),
    ("HDD:", "names a whole tier root"),
    ("/tiers/hdd/alice", "names a whole tier root"),
    ("/tiers/hdd/bob/run/*.dat", "not in alice's directory of tier HDD (/tiers/hdd/alice/)"),
    ("/tiers/hdd/run/*.dat", "not in alice's directory of tier HDD"),
    ("/tiers/hdd/alice2/x", "not in alice's directory of tier HDD"),
    ("a\nb", "printable"),
    (5, "expected a string"),
]


@pytest.mark.parametrize("element,message", ELEMENT_CASES)
def test_elements_outside_the_roots_are_refused(env, element, message):
    config, _ = env
    body = {**BODY, "services": [{"name": "s", "datamovers": [
        {"name": "d", "trigger": "step_start", "target": "NVMe", "operation": "copy",
         "elements": [element]}]}]}
    with pytest.raises(InvalidRequest) as e:
        parse_launch(body, config, home=lambda u: "/home/" + u)
    assert e.value.field == "services[0].datamovers[0].elements[0]"
    assert message in e.value.message


def test_absolute_element_inside_a_root_is_made_relative(env):
    """Relative to the user's directory of the tier, where the mover resolves patterns."""
    config, _ = env
    body = {**BODY, "services": [{"name": "s", "datamovers": [
        {"name": "d", "trigger": "step_start", "target": "NVMe", "operation": "copy",
         "elements": ["/tiers/hdd/alice/run/*.dat"]}]}]}
    req, _ = parse_launch(body, config, home=lambda u: "/home/" + u)
    dm = req.movers[0]
    assert (dm.source, dm.elements) == ("HDD", ("run/*.dat",))


@pytest.mark.parametrize("change,field", [
    ({"name": "a b"}, "name"),
    ({"user": "-x"}, "user"),
    ({"location": ["nowhere"]}, "location[0]"),
    ({"services": [{"name": "s", "hint": "XX"}]}, "services[0].hint"),
    ({"services": [{"name": "s", "datamovers": [{"name": "d", "trigger": "later",
                                                 "target": "NVMe", "operation": "copy",
                                                 "elements": ["a"]}]}]},
     "services[0].datamovers[0].trigger"),
    ({"services": [{"name": "s", "datamovers": [{"name": "d", "trigger": "step_start",
                                                 "target": "floppy", "operation": "copy",
                                                 "elements": ["a"]}]}]},
     "services[0].datamovers[0].target"),
    ({"services": [{"name": "s", "datamovers": [{"name": "d", "trigger": "step_start",
                                                 "target": "NVMe", "operation": "shred",
                                                 "elements": ["a"]}]}]},
     "services[0].datamovers[0].operation"),
    ({"services": [{"name": "s", "datamovers": [{"name": "d", "trigger": "step_start",
                                                 "target": "NVMe", "operation": "copy",
                                                 "elements": []}]}]},
     "services[0].datamovers[0].elements"),
    ({"extra": 1}, "extra"),
])
def test_launch_validation_names_the_field(env, change, field):
    config, _ = env
    with pytest.raises(InvalidRequest) as e:
        parse_launch({**BODY, **change}, config, home=lambda u: "/home/" + u)
    assert e.value.field == field


def test_derive_status_is_pending_before_submission(env):
    config, make = env
    m = make()
    m.launch(dict(BODY))
    step = m.step(BODY["name"])
    assert derive_status(step, {}, "waiting for service x (STAGINGIN: q)")[:2] == (
        "PENDING", "waiting for service x (STAGINGIN: q)")


def test_launch_wakes_the_follower_only_once_the_step_is_committed(env):
    """The follower acts on durable steps only: it is woken by the commit, not before."""
    from tests.poll import poll_until

    _, make = env
    m = make()
    woken = []
    m.follower.wake = lambda: woken.append(True)
    _, ticket = m.launch(dict(BODY))
    assert woken == []  # queued, not yet handed to the writer
    ticket.wait()
    poll_until(lambda: woken, "the follower woken by the commit", timeout=5, interval=0.01)
