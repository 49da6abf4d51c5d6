"""The leader lease (lease.py) on PostgreSQL: acquire, renew, lost, the store's fence;
the standby's application and the role endpoint (api/leadership.py)."""

from __future__ import annotations

import json

import pytest

from wfm_orchestrator.api.leadership import LEADER_HEADER, ROLE_PATH, standby_app
from wfm_orchestrator.errors import CommitRefused, SlurmUnavailable
from wfm_orchestrator.lease import (
    LeaseLost,
    default_advertise_url,
    node_name,
    submission_guard,
)
from wfm_orchestrator.store import Store

from ..conftest import connect_db

INSERT = ("INSERT INTO datanode_drain (name, reason, since) VALUES (?, ?, ?)")


def expire(dsn: str) -> None:
    """What the ttl's passing does, at once: the lease expires on the database's clock."""
    with connect_db(dsn) as db:
        db.execute("UPDATE wfm_lease SET expires = clock_timestamp()")


def test_one_instance_acquires_the_other_reads_who_leads(leases):
    a, b = leases("http://a:1"), leases("http://b:2")
    assert a.acquire() and a.epoch == 1
    assert not b.acquire() and b.epoch is None
    leader = b.leader()
    assert (leader.holder, leader.url, leader.epoch, leader.expired) == \
        (a.holder, "http://a:1", 1, False)
    assert a.holder != b.holder


def test_renewal_keeps_the_lease_and_a_takeover_increments_the_epoch(leases, pg_state_db):
    a, b = leases("http://a:1"), leases("http://b:2")
    assert a.acquire() and a.renew()
    assert not b.acquire()  # renewed: not expired
    expire(pg_state_db)
    assert b.acquire() and b.epoch == 2
    assert not a.renew()  # lost: another holder and epoch
    assert b.leader().url == "http://b:2"


def test_a_clean_stop_releases_the_lease_for_a_standby_at_once(leases):
    a, b = leases(), leases()
    assert a.acquire()
    a.release()
    assert b.acquire() and b.epoch == 2


def test_check_refuses_without_the_margin_on_the_local_clock(leases):
    now = [100.0]
    a = leases(ttl=9, clock=lambda: now[0])
    with pytest.raises(LeaseLost):
        a.check(1)  # not leading
    assert a.acquire()
    a.check(3)
    now[0] += 7  # 2 s left of the ttl, counted from when the acquire was sent
    with pytest.raises(LeaseLost):
        a.check(3)
    assert a.renew()
    a.check(3)
    a.drop()
    assert a.remaining() == 0


def test_the_fence_refuses_a_deposed_leaders_batch_and_stops_it(leases, pg_state_db):
    a, b = leases(), leases()
    assert a.acquire()
    store = Store(pg_state_db, lease=a)
    deposed = []
    store.on_deposed = deposed.append
    try:
        store.write([(INSERT, ("dn1", "committed while leading", 1.0))]).wait()
        expire(pg_state_db)
        assert b.acquire()
        ticket = store.write([(INSERT, ("dn2", "after the takeover", 2.0))])
        with pytest.raises(CommitRefused) as refused:
            ticket.wait()
        assert isinstance(refused.value.cause, LeaseLost)
        assert len(deposed) == 1 and isinstance(deposed[0], LeaseLost)
    finally:
        store.close()
    with connect_db(pg_state_db) as db:
        names = [r[0] for r in db.execute("SELECT name FROM datanode_drain ORDER BY name")]
    assert names == ["dn1"]


def test_an_expired_lease_nobody_took_refuses_the_batch_too(leases, pg_state_db):
    a = leases()
    assert a.acquire()
    store = Store(pg_state_db, lease=a)
    try:
        expire(pg_state_db)
        with pytest.raises(CommitRefused):
            store.write([(INSERT, ("dn1", "expired", 1.0))]).wait()
    finally:
        store.close()


def test_a_faulty_write_is_still_fenced_on_the_write_by_write_retry(leases, pg_state_db):
    a, b = leases(), leases()
    assert a.acquire()
    store = Store(pg_state_db, lease=a)
    try:
        store.write([(INSERT, ("dn1", "first", 1.0))]).wait()
        expire(pg_state_db)
        assert b.acquire()
        # A duplicate key would make the store retry write by write: the fence runs first.
        bad = store.write([(INSERT, ("dn1", "duplicate", 2.0))])
        good = store.write([(INSERT, ("dn3", "would be fine", 2.0))])
        store.flush()
        for ticket in (bad, good):
            with pytest.raises(CommitRefused):
                ticket.wait()
    finally:
        store.close()
    with connect_db(pg_state_db) as db:
        assert [r[0] for r in db.execute("SELECT name FROM datanode_drain")] == ["dn1"]


def test_a_leaders_store_takes_no_advisory_lock(leases, pg_state_db):
    a = leases()
    assert a.acquire()
    first = Store(pg_state_db, lease=a)
    try:
        Store(pg_state_db).close()  # the advisory lock is free: the lease replaced it
    finally:
        first.close()


def test_the_standby_answers_503_with_the_leader_and_its_role():
    app = standby_app(lambda: "http://leader:8080", lambda: 7)
    answers = []

    def call(method: str, path: str):
        body = b"".join(app({"REQUEST_METHOD": method, "PATH_INFO": path},
                            lambda status, headers: answers.append((status, dict(headers)))))
        return answers[-1][0], answers[-1][1], json.loads(body)

    status, headers, body = call("POST", "/v1.0.0/ephemeralservice/reserve")
    assert status.startswith("503") and headers[LEADER_HEADER] == "http://leader:8080"
    assert body["leader"] == "http://leader:8080" and "standby" in body["message"]
    status, headers, body = call("GET", ROLE_PATH)
    assert status.startswith("200")
    assert body == {"role": "standby", "leader": "http://leader:8080", "epoch": 7}
    nobody = standby_app(lambda: None, lambda: None)
    nobody({"REQUEST_METHOD": "GET", "PATH_INFO": "/ui"},
           lambda status, headers: answers.append((status, dict(headers))))
    assert answers[-1][0].startswith("503") and LEADER_HEADER not in answers[-1][1]


def test_the_role_endpoint_of_a_single_orchestrator_says_leader(client):
    doc = client.simulate_get(ROLE_PATH).json
    assert doc["role"] == "leader" and doc["epoch"] is None
    assert doc["leader"].startswith("http://127.0.0.1:")


def test_the_advertised_url_defaults_to_the_listen_address():
    assert default_advertise_url("127.0.0.1:28080") == "http://127.0.0.1:28080"
    assert default_advertise_url("[::1]:8080") == "http://[::1]:8080"
    assert not default_advertise_url("0.0.0.0:8080").startswith("http://0.0.0.0")


def test_a_submission_waits_for_earlier_writes_and_is_refused_once_deposed(leases,
                                                                           pg_state_db):
    a, b = leases(), leases()
    assert a.acquire()
    store = Store(pg_state_db, lease=a)
    guard = submission_guard(a, lambda: store.write([]).wait())
    try:
        record = store.write([(INSERT, ("dn1", "the job's record", 1.0))])
        guard()  # the barrier: the record is committed before the submission may leave
        assert record.done and record.error is None
        expire(pg_state_db)
        assert b.acquire()
        with pytest.raises(SlurmUnavailable, match="not submitted"):
            guard()
    finally:
        store.close()


def test_a_leader_cancels_a_second_job_only_under_the_submission_guard(leases, pg_state_db,
                                                                       make_config):
    """cli.build_all gives the service manager the guard of the submissions: the cancel of
    a second job of a reservation (services.py) needs the same proof of leadership."""
    from wfm_orchestrator.cli import build_all

    from ..conftest import SERVICE_CONF

    a = leases()
    assert a.acquire()
    *_, services, _steps, store = build_all(make_config(SERVICE_CONF, state_db=pg_state_db),
                                            lease=a)
    try:
        guard = services.slurm.before_submit
        assert guard is not None and services.still_leading is guard
    finally:
        store.close()


def test_a_dead_holder_of_this_host_is_replaced_without_waiting_for_the_ttl(leases):
    import subprocess

    dead = subprocess.Popen(["true"])  # noqa: S607 - a pid that no longer runs
    dead.wait()
    a, b, c = leases(), leases(), leases()
    a.holder = f"{node_name()}:{dead.pid}:0000"
    assert a.acquire()
    assert b.acquire() and b.epoch == 2  # a's process is gone: no wait for the expiry
    assert not c.acquire()  # b runs (this very process): c waits for the expiry
    a.holder = f"elsewhere:{dead.pid}:0000"
    assert not a.acquire()


def test_a_takeover_waits_for_the_commit_of_a_batch_its_fence_let_through(leases,
                                                                         pg_state_db):
    """The fence's FOR SHARE: a standby's UPDATE waits until the batch committed, so the
    new leader's load sees it."""
    import threading

    import psycopg

    from tests.poll import poll_until

    a, b = leases(ttl=3), leases(ttl=30)
    assert a.acquire()
    took: list[bool] = []
    with psycopg.connect(pg_state_db) as batch:
        batch.execute("SELECT wfm_fence(%s, %s)", a.fencing)  # the batch's first statement
        poll_until(lambda: b.leader().expired, what="a's lease expires", timeout=10)
        backend = b._conn.info.backend_pid  # the standby's lease connection, opened above
        standby = threading.Thread(target=lambda: took.append(b.acquire()))
        standby.start()
        with psycopg.connect(pg_state_db, autocommit=True) as watch:
            poll_until(lambda: watch.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
                (backend,)).fetchone(), what="the takeover waits for the batch's lock",
                timeout=10)
        assert not took
        batch.execute("CREATE TABLE committed_by_the_batch (x INTEGER)")
    # The with-block committed the batch.
    standby.join(timeout=10)
    assert took == [True] and b.epoch == 2


def test_a_standby_older_than_the_schema_never_takes_the_lease(leases, pg_state_db, caplog):
    """An upgrade one node at a time (docs/ha.md): once the newer node migrated the schema,
    the older one must not take over (it could not load the state) but stay a standby."""
    from wfm_orchestrator.store import MIGRATIONS

    known = len(MIGRATIONS)
    first = leases(known_schema=known)
    assert first.acquire()  # no schema yet: version 0
    Store(pg_state_db, lease=first).close()  # migrates to `known`
    first.release()
    with connect_db(pg_state_db) as db:  # what a newer orchestrator's migration leaves
        db.execute("INSERT INTO schema_migration (version, applied) VALUES (?, ?)",
                   (known + 1, 0.0))
    older = leases(known_schema=known)
    assert not older.acquire() and older.epoch is None
    assert f"schema is version {known + 1}, newer than this orchestrator knows ({known})" \
        in caplog.text
    assert not older.acquire()  # again: still a standby, said once
    assert caplog.text.count("newer than this orchestrator knows") == 1
    newer = leases(known_schema=known + 1)
    assert newer.acquire() and newer.epoch == 2
