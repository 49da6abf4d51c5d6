"""Ended steps live in the state database only (issue #21): they leave memory once their
last write is committed, a start loads only the steps still followed, and status, lists,
progress, abort and a launch again answer for an ended step as they did in memory."""

from __future__ import annotations

import pytest

from wfm_orchestrator.errors import RequestFailed
from wfm_orchestrator.steps import manager as step_manager

from ..conftest import STEP_BODY as BODY
from ..conftest import connect_db

NAME = BODY["name"]


def completed(m, slurm, services, body=BODY) -> dict[int, str]:
    """Launch ``body`` and run every job of it to COMPLETED (the step is DONE); the secret
    of each of its jobs, by id."""
    services.usable()
    before = set(slurm.specs)
    m.launch(dict(body))
    m.reconcile()
    mine = sorted(j for j in set(slurm.specs) - before if body["name"] in slurm.specs[j].name)
    for job_id in mine:
        slurm.set_state(job_id, "COMPLETED", 0)
    m.reconcile()
    m.store.write([]).wait()  # every write before it committed
    return {j: slurm.specs[j].environment.get("WFM_STEP_SECRET", "") for j in mine}


def waiting(m, services, name: str) -> None:
    """Launch a step that waits for its service (followed: it stays in memory)."""
    services.usable(status="STAGINGIN")
    m.launch({**BODY, "name": name})
    m.reconcile()
    m.store.write([]).wait()


def ended_column(config, name: str):
    with connect_db(config.state_db) as conn:
        return conn.execute("SELECT ended FROM step WHERE name = ?", (name,)).fetchone()[0]


def test_an_ended_step_leaves_memory_and_answers_alike_after_a_restart(stepped):
    config, make, m, slurm, services, clock = stepped
    completed(m, slurm, services)
    assert NAME not in m._steps and NAME not in m._order  # the database answers for it
    status, jobs = m.status(NAME), m.jobs(NAME)
    assert status["status"] == "COMPLETED" and len(jobs) == 4
    assert ended_column(config, NAME) is not None
    m.store.close()
    m2 = make(slurm, services)
    assert m2._steps == {} and m2.live() == []  # nothing of it loaded at start
    assert m2.status(NAME) == status and m2.jobs(NAME) == jobs
    assert m2.statuses() == [status]
    assert m2.step(NAME).phase == "DONE"


def test_progress_and_abort_of_an_ended_step_are_recorded_and_it_leaves_memory_again(stepped):
    config, make, m, slurm, services, clock = stepped
    secrets = completed(m, slurm, services)
    first_end = ended_column(config, NAME)
    clock.now += 100
    answer, ticket = m.progress({"step_name": NAME, "datamover_name": "out",
                                 "progress": "done at last",
                                 "step_secret": next(iter(secrets.values()))})
    ticket.wait()
    assert answer["message"] == "progress recorded"
    assert "stage-out mover out done: done at last" in m.status(NAME)["detail"]
    assert NAME not in m._steps
    # Its retention starts again from its last change, as it did in memory.
    assert ended_column(config, NAME) == pytest.approx(first_end + 100)
    answer, ticket = m.abort(NAME)
    ticket.wait()
    assert answer["message"] == "abort accepted" and NAME not in m._steps
    assert "had ended COMPLETED before the abort request" in m.status(NAME)["detail"]
    assert m.abort(NAME)[0]["message"] == "abort already requested"


def test_a_launch_again_of_an_ended_step_is_the_same_step_or_refused(stepped):
    config, make, m, slurm, services, clock = stepped
    completed(m, slurm, services)
    answer, ticket = m.launch(dict(BODY))
    ticket.wait()
    assert answer["message"] == "step already launched"
    with pytest.raises(RequestFailed):
        m.launch({**BODY, "command": "something else"})
    assert m.status(NAME)["status"] == "COMPLETED"


def test_lists_merge_memory_and_database_in_order_across_chunks(stepped, monkeypatch):
    """Ended (database) and followed (memory) steps interleaved by launch time: every list
    and every page holds them in the list's order, each once, whatever the chunk size."""
    config, make, m, slurm, services, clock = stepped
    names = [f"alice_s1_step_{i}" for i in range(7)]
    for i, name in enumerate(names):
        if i % 3 == 1:
            waiting(m, services, name)
        else:
            completed(m, slurm, services, {**BODY, "name": name})
        clock.now += 1
    assert sorted(m._steps) == [names[1], names[4]]
    for chunk in (2, 3, 1001):
        monkeypatch.setattr(step_manager, "PAGE_CHUNK", chunk)
        assert [s["name"] for s in m.statuses()] == names
        for limit in (1, 2, 3, 7):
            seen, after = [], None
            while True:
                page = m.page(after, limit)
                assert len(page.items) <= limit
                seen += [s["name"] for s in page.items]
                if page.next is None:
                    break
                after = page.next
            assert seen == names, (chunk, limit)
        for n in range(9):  # the dashboard's last steps: as the list's end
            assert m.newest(n) == m.statuses()[max(0, len(names) - n):], n
        kept = m.page(None, 2, lambda s: s.name in (names[0], names[4], names[6]))
        assert [s["name"] for s in kept.items] == [names[0], names[4]]
        assert [s["name"] for s in m.page(kept.next, 2, lambda s: s.name in (
            names[0], names[4], names[6])).items] == [names[6]]


def test_steps_ended_before_the_column_existed_are_recorded_at_the_first_start(stepped):
    """A database of before schema migration 10: its ended steps have no end recorded; the
    first start loads them, records their end, and they leave memory once committed."""
    config, make, m, slurm, services, clock = stepped
    completed(m, slurm, services)
    m.store.close()
    with connect_db(config.state_db) as conn:
        conn.execute("UPDATE step SET ended = NULL")
    m2 = make(slurm, services)
    m2.store.write([]).wait()
    assert NAME not in m2._steps
    assert ended_column(config, NAME) is not None
    assert m2.status(NAME)["status"] == "COMPLETED"


def test_the_status_stored_with_an_ended_step_is_the_one_its_records_give(stepped):
    """The lists show an ended step's status as stored with its rows: the same as derived
    from its records, for a step completed, one whose stage-in mover failed, one aborted."""
    config, make, m, slurm, services, clock = stepped
    completed(m, slurm, services)
    services.usable()
    m.launch({**BODY, "name": "alice_s1_step_f"})
    m.reconcile()
    first = min(j for j in slurm.specs if "alice_s1_step_f" in slurm.specs[j].name)
    slurm.set_state(first, "FAILED", 1)
    m.reconcile()
    m.reconcile()
    m.launch({**BODY, "name": "alice_s1_step_a"})
    m.reconcile()
    m.abort("alice_s1_step_a")
    m.reconcile()
    m.reconcile()
    m.store.write([]).wait()
    for name, status in ((NAME, "COMPLETED"), ("alice_s1_step_f", "FAILED"),
                         ("alice_s1_step_a", "CANCELLED")):
        assert name not in m._steps
        with m._lock:
            derived = m._status(*m._stored(name))
        assert m.status(name) == derived and derived["status"] == status
    # Launched at the same time: in name order.
    assert [s["name"] for s in m.statuses()] == sorted([NAME, "alice_s1_step_f",
                                                        "alice_s1_step_a"])


def test_a_list_of_one_users_steps_merges_alike(stepped, monkeypatch):
    """page(user=...) (the database's index) gives what keep filtering by user gives."""
    config, make, m, slurm, services, clock = stepped
    for i in range(6):
        body = {**BODY, "name": f"s_{i}"}
        if i % 2:
            waiting(m, services, body["name"])
        else:
            completed(m, slurm, services, body)
        clock.now += 1
    with connect_db(config.state_db) as conn:  # two of them as another user's
        conn.execute("UPDATE step SET \"user\" = 'bob' WHERE name IN ('s_2', 's_3')")
    m._steps["s_3"] = m._steps["s_3"].__class__(**{**m._steps["s_3"].__dict__, "user": "bob"})
    monkeypatch.setattr(step_manager, "PAGE_CHUNK", 2)
    for user in ("alice", "bob"):
        by_keep = [s["name"] for s in m.page(None, None, lambda s, u=user: s.user == u).items]
        assert [s["name"] for s in m.statuses(user)] == by_keep
        first = m.page(None, 1, user=user)
        assert [s["name"] for s in first.items + m.page(first.next, 5, user=user).items] \
            == by_keep
    assert [s["name"] for s in m.statuses("bob")] == ["s_2", "s_3"]


def test_counts_are_the_lists_statuses_counted(stepped):
    config, make, m, slurm, services, clock = stepped
    completed(m, slurm, services)
    completed(m, slurm, services, {**BODY, "name": "s_done"})
    waiting(m, services, "s_waits")
    m.abort("s_done")[1].wait()  # an ended step in the database, written again
    counted: dict[str, int] = {}
    for st in m.statuses():
        counted[st["status"]] = counted.get(st["status"], 0) + 1
    assert m.counts() == counted and sum(counted.values()) == 3
    with m._lock:  # an ended step held in memory counts once
        m._hold(NAME)
    assert m.counts() == counted
