"""step_retention: ended steps and their jobs (data movers included) are forgotten from
memory and the state database; a forgotten step answers as an unknown one."""

from __future__ import annotations

from falcon import testing

from tests.poll import poll_until
from wfm_orchestrator.api import create_app
from wfm_orchestrator.resource_manager import ResourceManager
from wfm_orchestrator.services import ServiceManager
from wfm_orchestrator.steps import manager as step_manager
from wfm_orchestrator.store import Store

from ..conftest import STEP_BODY as BODY
from ..conftest import STEP_CONF, connect_db
from ..fake_slurm import FakeServices, FakeSlurm
from ..jwks_fixture import FakeClock

NAME = BODY["name"]


def rows(config, table: str, column: str, name: str) -> int:
    with connect_db(config.state_db) as conn:
        return conn.execute(f"SELECT count(*) FROM {table} WHERE {column} = ?",  # noqa: S608
                            (name,)).fetchone()[0]


def completed(m, slurm, services, body=BODY) -> None:
    """Launch ``body`` and run its movers and its job to COMPLETED (the step is DONE)."""
    services.usable()
    m.launch(dict(body))
    m.reconcile()
    for job_id in sorted(slurm.specs):
        slurm.set_state(job_id, "COMPLETED", 0)
    m.reconcile()
    assert m.step(body["name"]).phase == "DONE"
    m.store.write([]).wait()  # every write before it committed


def test_an_ended_step_is_forgotten_with_its_movers_after_step_retention(stepped):
    """Memory, the lists and the rows of the step and of its four jobs: all gone once
    step_retention has passed since its last change, and not before; a restart does not
    bring it back."""
    config, make, m, slurm, services, clock = stepped
    completed(m, slurm, services)
    assert rows(config, "step_job", "step", NAME) == 4  # three movers and the step's job
    clock.now += config.step_retention - 1
    assert m.forget_ended() == []
    clock.now += 2
    assert m.forget_ended() == [NAME]
    assert m.step(NAME) is None and m.status(NAME) is None and m.jobs(NAME) == {}
    assert m.statuses() == []
    assert rows(config, "step", "name", NAME) == 0
    assert rows(config, "step_job", "step", NAME) == 0
    m.store.close()
    assert make(slurm, services).step(NAME) is None


def test_a_live_or_unsettled_step_is_kept_however_old(stepped):
    """A step still followed (waiting, submitted, failed with a job not ended) stays."""
    config, make, m, slurm, services, clock = stepped
    services.usable()
    m.launch(dict(BODY))
    m.reconcile()
    waiting = {**BODY, "name": "alice_s1_step_1"}
    services.usable(status="STAGINGIN")
    m.launch(waiting)
    m.reconcile()
    clock.now += 10 * config.step_retention
    assert m.forget_ended() == []
    assert {s["name"] for s in m.statuses()} == {NAME, "alice_s1_step_1"}


def test_a_failed_step_is_forgotten_once_every_job_ended(stepped):
    config, make, m, slurm, services, clock = stepped
    services.usable()
    m.launch(dict(BODY))
    m.reconcile()
    first = min(slurm.specs)
    slurm.set_state(first, "FAILED", 1)  # a stage-in mover fails: the rest is cancelled
    m.reconcile()
    m.reconcile()
    assert m.status(NAME)["status"] == "FAILED"
    clock.now += config.step_retention + 1
    assert m.forget_ended() == [NAME]


def test_rows_go_in_batches_and_every_one_goes(stepped, monkeypatch):
    """Several writes of FORGET_BATCH steps (other writes commit between them)."""
    config, make, m, slurm, services, clock = stepped
    monkeypatch.setattr(step_manager, "FORGET_BATCH", 2)
    writes = []
    write = m.store.write
    monkeypatch.setattr(m.store, "write", lambda stmts, **kw: writes.append(stmts) or
                        write(stmts, **kw))
    for i in range(5):
        completed(m, slurm, services, {**BODY, "name": f"alice_s1_step_{i}"})
    writes.clear()
    clock.now += config.step_retention + 1
    assert len(m.forget_ended()) == 5
    assert [len(w) for w in writes] == [4, 4, 2]  # per step: its row and its jobs' rows
    with connect_db(config.state_db) as conn:
        assert conn.execute("SELECT count(*) FROM step").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM step_job").fetchone()[0] == 0


def test_the_cursor_of_a_forgotten_step_still_works(stepped):
    """A page of the step list taken before a step is forgotten: its cursor (the forgotten
    step's key) still says where the next page starts."""
    config, make, m, slurm, services, clock = stepped
    for i in range(4):
        completed(m, slurm, services, {**BODY, "name": f"alice_s1_step_{i}"})
        clock.now += 1
    first = m.page(None, 2)
    assert [s["name"] for s in first.items] == ["alice_s1_step_0", "alice_s1_step_1"]
    clock.now += config.step_retention - 2.5  # steps 0 and 1 ended long enough ago
    assert m.forget_ended() == ["alice_s1_step_0", "alice_s1_step_1"]
    rest = m.page(first.next, 2)
    assert [s["name"] for s in rest.items] == ["alice_s1_step_2", "alice_s1_step_3"]
    assert rest.next is None


def test_a_name_launched_again_keeps_none_of_the_forgotten_steps_jobs(stepped):
    """A new step under a forgotten name starts without jobs, in memory and after a
    restart (its launch clears rows the forgotten one may have left)."""
    config, make, m, slurm, services, clock = stepped
    completed(m, slurm, services)
    clock.now += config.step_retention + 1
    m.forget_ended()
    with connect_db(config.state_db) as conn:  # as if its deletion had not committed
        conn.execute("INSERT INTO step_job (step, key, job_id, state, updated) "
                     "VALUES (?, 'main', 7, 'COMPLETED', 0)", (NAME,))
    services.usable(status="STAGINGIN")
    m.launch(dict(BODY))[1].wait()
    assert m.jobs(NAME) == {}
    m.store.close()
    again = make(slurm, services)
    assert again.jobs(NAME) == {} and again.status(NAME)["status"] == "PENDING"


def test_a_forgotten_step_answers_as_an_unknown_one_through_the_api(make_config, state_db):
    """step/status/{name}: [] like a name never launched; progress and abort: 500; the
    lists no longer hold it."""
    config = make_config(STEP_CONF)
    store = Store(config.state_db)
    try:
        slurm, services, clock = FakeSlurm(cancel_ends_jobs=True), FakeServices(), \
            FakeClock(1_000_000.0)
        rm = ResourceManager(config, store)
        m = step_manager.StepManager(config, store, services, slurm, clock=clock,
                                     home=lambda u: "/home/" + u)
        client = testing.TestClient(create_app(config, rm, ServiceManager(config, rm, store,
                                                                          None), m))
        assert client.simulate_post("/v1.0.0/step/launch", json=BODY).status_code == 200
        assert client.simulate_delete(f"/v1.0.0/step/abort/{NAME}").status_code == 200
        m.reconcile()  # nothing was submitted: the aborted step is done at once
        assert client.simulate_get(f"/v1.0.0/step/status/{NAME}").json["status"] == "CANCELLED"
        clock.now += config.step_retention + 1
        assert m.forget_ended() == [NAME]
        never = NAME.replace("step_0", "step_9")
        for ident in (NAME, never):
            r = client.simulate_get(f"/v1.0.0/step/status/{ident}")
            assert r.status_code == 200 and r.json == [], (ident, r.text)
        assert client.simulate_get("/v1.0.0/step/status").json == []
        assert client.simulate_get("/v1.0.0/step/status/alice").json == []
        for ident in (NAME, never):
            r = client.simulate_post("/v1.0.0/step/progress", json={
                "step_name": ident, "datamover_name": "in1", "progress": "1%",
                "step_secret": "s"})
            assert r.status_code == 500 and "not found" in r.json["message"]
            assert client.simulate_delete(f"/v1.0.0/step/abort/{ident}").status_code == 500
    finally:
        store.close()


def test_housekeeping_runs_at_start(env):
    """The step manager's housekeeping thread forgets at start, then every 10 minutes."""
    config, make = env
    slurm, services = FakeSlurm(cancel_ends_jobs=True), FakeServices()
    m = make(slurm, services)
    m.clock = FakeClock(1_000_000.0)
    completed(m, slurm, services)
    m.clock.now += config.step_retention + 1
    m.housekeeping.start()
    try:
        poll_until(lambda: m.step(NAME) is None, "housekeeping forgets the step", 10)
    finally:
        m.housekeeping.stop()
