import contextlib
import logging
import os
import sqlite3
import stat
import threading
import time

import pytest

from wfm_orchestrator.errors import CommitRefused, StoreError, WaitOnEventLoop
from wfm_orchestrator.store import APPLICATION_ID, DONE, MIGRATIONS, Store, refuse_waits

from ..conftest import SMALL_CONF, sqlite_db_as_before

INSERT = ("INSERT INTO reservation (name, \"user\", type, request, state, seq, created, updated)"
          " VALUES (?, 'alice', 'SBB', '{}', 'FREE', ?, 0, 0)")


def test_new_database_is_versioned_and_marked_as_ours(tmp_path):
    """A new database gets the application id, WAL and the latest schema version."""
    path = str(tmp_path / "s.db")
    Store(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def committed(state_db: str, sql: str) -> list[tuple]:
    """The rows of ``sql`` read by a connection of the test's own."""
    if state_db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(state_db) as conn:
            return conn.execute(sql).fetchall()
    return sqlite3.connect(state_db).execute(sql).fetchall()


def test_write_is_durable_once_the_ticket_returns(state_db):
    """After ticket.wait() the row is committed and visible to another connection."""
    store = Store(state_db)
    store.write([(INSERT, ("a", 1))]).wait()
    assert committed(state_db, "SELECT name FROM reservation") == [("a",)]
    store.close()


def test_concurrent_writes_are_grouped_and_all_committed(state_db):
    """Many threads writing at once: every write committed exactly once."""
    store = Store(state_db)
    errors = []

    def writer(i):
        try:
            store.write([(INSERT, (f"r{i}", i))]).wait()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.query("SELECT count(*) AS n FROM reservation")[0]["n"] == 200
    store.close()


def test_a_failing_write_fails_alone(state_db):
    """A write that violates a constraint fails its own ticket, not the batch."""
    store = Store(state_db)
    store.write([(INSERT, ("a", 1))]).wait()
    bad = store.write([(INSERT, ("b", 2)), (INSERT, ("a", 3))])
    good = store.write([(INSERT, ("c", 4))])
    with pytest.raises(StoreError, match="refused a write"):
        bad.wait()
    good.wait()
    names = [r["name"] for r in store.query("SELECT name FROM reservation ORDER BY name")]
    assert names == ["a", "c"]  # b rolled back with its savepoint
    store.close()


def test_second_store_on_the_same_database_is_refused(state_db):
    """Only one orchestrator may use a state database."""
    path = state_db
    first = Store(path)
    with pytest.raises(StoreError, match="in use by another orchestrator"):
        Store(path)
    first.close()
    Store(path).close()  # free again once the first has stopped


def test_foreign_sqlite_database_is_refused_and_kept(tmp_path):
    """An SQLite file of another application is refused, untouched."""
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE mine (x)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="another application"):
        Store(str(path))
    assert path.read_bytes() == before


def test_non_sqlite_file_is_refused_and_kept(tmp_path):
    """A file that is not SQLite at all is refused, untouched."""
    path = tmp_path / "notes.txt"
    path.write_text("my precious notes\n" * 100)
    with pytest.raises(StoreError, match="not an SQLite database"):
        Store(str(path))
    assert path.read_text() == "my precious notes\n" * 100


def test_newer_schema_is_refused(tmp_path):
    """A database from a newer orchestrator is not downgraded."""
    path = str(tmp_path / "s.db")
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this orchestrator"):
        Store(path)


def test_unwritable_directory_is_a_clear_error(tmp_path):
    """A state_db in a place that cannot be created says so."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot open"):
        Store(str(blocker / "sub" / "s.db"))


# --- secrets at rest: the directory 0700 and every file 0600, whatever the umask ---------


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def state_modes(db: str) -> dict[str, int]:
    """The mode of the directory and of each file of the database while it is in use."""
    files = [db, db + "-wal", db + "-shm", db + ".lock"]
    return {"dir": mode(os.path.dirname(db))} | {f[len(db):] or "db": mode(f) for f in files}


PRIVATE = {"dir": 0o700, "db": 0o600, "-wal": 0o600, "-shm": 0o600, ".lock": 0o600}


@pytest.mark.parametrize("mask", [0o022, 0o000], ids=["umask-022", "umask-000"])
def test_a_new_store_is_private_whatever_the_umask(tmp_path, mask):
    """Directory 0700, database, -wal, -shm and lock 0600, even under umask 000."""
    db = str(tmp_path / "var" / "lib" / "wfm" / "state.db")
    with umask(mask):
        store = Store(db)
        store.write([(INSERT, ("a", 1))]).wait()  # the -wal and -shm exist after a write
        assert store.query("SELECT name FROM reservation")[0]["name"] == "a"
    try:
        assert state_modes(db) == PRIVATE
    finally:
        store.close()


def test_an_open_database_and_directory_of_our_own_are_tightened_and_logged(tmp_path, caplog):
    """A 0644 database (older version, restore) in a 0755 directory: 0600 and 0700 at start."""
    directory = tmp_path / "state"
    directory.mkdir()
    db = str(directory / "state.db")
    Store(db).close()
    os.chmod(db, 0o644)
    for leftover in (db + "-wal", db + "-shm"):  # left by a crash of an older version
        with open(leftover, "wb"):
            pass
        os.chmod(leftover, 0o644)
    os.chmod(db + ".lock", 0o644)
    os.chmod(directory, 0o755)  # noqa: S103 - the open directory under test
    (directory / "slurm.jwt").write_text("x")
    os.chmod(directory / "slurm.jwt", 0o600)  # ours and closed: nothing is taken from others
    with caplog.at_level(logging.WARNING, logger="wfm_orchestrator.state_files"):
        store = Store(db)
    try:
        store.write([(INSERT, ("a", 1))]).wait()
        assert state_modes(db) == PRIVATE
        assert store.query("SELECT name FROM reservation")[0]["name"] == "a"  # data kept
    finally:
        store.close()
    logged = caplog.text
    for path in (str(directory), db, db + "-wal", db + "-shm", db + ".lock"):
        assert f"{path} was open to other users" in logged


def test_a_shared_directory_is_refused_untouched(tmp_path):
    """Open to others and holding others' files: never chmodded; refused, with the fix."""
    directory = tmp_path / "shared"
    directory.mkdir()
    os.chmod(directory, 0o755)  # noqa: S103 - the shared directory under test
    (directory / "report.txt").write_text("for everyone")
    os.chmod(directory / "report.txt", 0o644)
    with pytest.raises(StoreError) as refused:
        Store(str(directory / "state.db"))
    message = str(refused.value)
    assert f"state_db {directory / 'state.db'}: its directory {directory} (mode 0755)" in message
    assert str(directory / "report.txt") in message  # what makes it shared
    assert f"chmod 0700 {directory}" in message and "directory of its own" in message
    assert mode(directory) == 0o755
    assert sorted(os.listdir(directory)) == ["report.txt"]  # no lock, no database


def test_a_sticky_directory_like_tmp_is_refused(tmp_path):
    """A sticky directory open to all (like /tmp): never chmodded; refused."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    os.chmod(directory, 0o1777)  # noqa: S103 - the shared directory under test
    with pytest.raises(StoreError, match="sticky bit.*chmod 0700"):
        Store(str(directory / "state.db"))
    assert mode(directory) == 0o1777


def test_a_directory_of_another_user_is_refused(tmp_path):
    """Its owner could open it, or swap the files, at any time: refused even when 0700."""
    assert os.geteuid() == 0, "the unit tests run as root (deploy/install, CI)"
    directory = tmp_path / "theirs"
    directory.mkdir()
    os.chmod(directory, 0o700)
    os.chown(directory, 65534, 65534)
    with pytest.raises(StoreError, match=f"{directory} belongs to uid 65534.*chmod 0700"):
        Store(str(directory / "state.db"))
    assert os.listdir(directory) == []


# --- batching: writes queue until a flush or a wait -----------------------------------


def on_loop_thread(fn):
    """Run ``fn`` on a thread declared as the server's event loop; its result or exception."""
    out: dict = {}

    def run():
        refuse_waits()
        try:
            out["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    assert not t.is_alive()
    if "error" in out:
        raise out["error"]
    return out["result"]


def test_writes_reach_the_writer_at_the_flush(state_db):
    """Writes wait in the store until flush() (the server's, once a loop turn): one commit."""
    store = Store(state_db)
    tickets = [store.write([(INSERT, (f"r{i}", i))]) for i in range(5)]
    time.sleep(0.1)
    assert not any(t.done for t in tickets) and len(store._pending) == 5
    store.flush()
    assert store._pending == []
    for t in tickets:
        t.wait()
    assert store.query("SELECT count(*) AS n FROM reservation")[0]["n"] == 5
    store.close()


def test_a_wait_flushes_what_is_queued(state_db):
    """A worker that waits never waits for a flush nobody will do."""
    store = Store(state_db)
    store.write([(INSERT, ("a", 1))]).wait(timeout=5)
    assert store.query("SELECT name FROM reservation")[0]["name"] == "a"
    store.close()


def test_waiting_on_the_loop_thread_raises_instead_of_blocking(state_db):
    """On a thread that refuses waits (the event loop) wait() raises; elsewhere it waits."""
    store = Store(state_db)
    ticket = store.write([(INSERT, ("a", 1))])
    started = time.monotonic()
    with pytest.raises(WaitOnEventLoop):
        on_loop_thread(lambda: ticket.wait(timeout=5))
    assert time.monotonic() - started < 1
    assert not ticket.done  # nothing was flushed by the refused wait
    on_loop_thread(lambda: DONE.wait())  # a finished ticket is no wait at all
    ticket.wait()
    store.close()


def test_a_worker_write_is_committed_after_the_loop_writes_before_it(state_db):
    """Commit order is call order, across the loop thread's queued writes and a worker's."""
    store = Store(state_db)
    update = ("UPDATE reservation SET state = 'RELEASED' WHERE name = ?", ("a",))

    def turn():
        first = store.write([(INSERT, ("a", 1))])  # queued until the turn ends...
        worker = threading.Thread(target=lambda: store.write([update]).wait())
        worker.start()
        worker.join(10)  # ...but the worker's wait takes it along, in order
        return first.done

    assert on_loop_thread(turn)
    assert store.query("SELECT state FROM reservation")[0]["state"] == "RELEASED"
    store.close()


def test_a_refused_batch_calls_each_recovery_once_before_its_tickets_finish(state_db):
    """on_failure runs on the writer, once per distinct callback, before any waiter resumes."""
    store = Store(state_db)
    store.write([(INSERT, ("a", 1))]).wait()
    calls: list[str] = []
    seen_done: list[bool] = []
    tickets: list = []

    def resync():
        calls.append("resync")
        seen_done.append(any(t.done for t in tickets))

    def other():
        calls.append("other")

    tickets += [store.write([(INSERT, ("a", 2))], on_failure=resync),  # duplicate name
                store.write([(INSERT, ("a", 3))], on_failure=resync),  # duplicate name
                store.write([(INSERT, ("b", 4))], on_failure=other)]   # fine
    with pytest.raises(CommitRefused, match="refused a write"):
        tickets[1].wait()
    assert calls == ["resync"] and seen_done == [False]
    tickets[2].wait()  # committed: its callback is not called
    store.close()


def test_ticket_callbacks_run_once_committed_or_at_once_when_done(state_db):
    store = Store(state_db)
    seen = []
    ticket = store.write([(INSERT, ("a", 1))])
    ticket.add_done_callback(lambda t: seen.append(("first", t.error)))
    ticket.wait()
    ticket.add_done_callback(lambda t: seen.append(("late", t.error)))
    assert seen == [("first", None), ("late", None)]
    bad = store.write([(INSERT, ("a", 2))])  # duplicate name
    with pytest.raises(StoreError):
        bad.wait()
    bad.add_done_callback(lambda t: seen.append(("bad", type(t.error).__name__)))
    assert seen[-1][0] == "bad"  # sqlite3's IntegrityError, psycopg's UniqueViolation
    assert "IntegrityError" in {c.__name__ for c in type(bad.error).__mro__}
    store.close()


def _corrupt_a_page_of(path: str, table: str) -> None:
    """Overwrite a leaf page of ``table`` with bytes that are no b-tree page."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    page = conn.execute("SELECT max(pageno) FROM dbstat WHERE name = ?", (table,)).fetchone()[0]
    conn.close()
    with open(path, "r+b") as fh:
        fh.seek((page - 1) * page_size)
        fh.write(b"\x0d" + b"\xff" * (page_size - 1))


@pytest.mark.parametrize("large", [False, True])
def test_a_corrupt_table_read_at_start_is_refused_whatever_the_size(tmp_path, monkeypatch,
                                                                    large):
    """A database larger than FULL_CHECK_BYTES is checked table by table: a corrupt page of
    a table a start reads whole (reservations) is refused as before."""
    path = str(tmp_path / "s.db")
    store = Store(path)
    store.write([(INSERT, (f"r{i:05d}" + "x" * 200, i)) for i in range(2000)]).wait()
    store.close()
    _corrupt_a_page_of(path, "reservation")
    if large:
        monkeypatch.setattr("wfm_orchestrator.store_sqlite.FULL_CHECK_BYTES", 0)
    with pytest.raises(StoreError, match="is corrupt|unusable"):
        Store(path)


def test_a_start_reads_while_the_check_runs_and_nothing_is_written_before_its_verdict(
        tmp_path, monkeypatch):
    """verify_later (a start: cli.build_all): the records are read while SQLite checks the
    file on its own thread; a write waits for the verdict, and a corrupt file (here an
    index the start never reads) is refused then, by the write and by verified(), the
    file left byte for byte."""
    path = str(tmp_path / "s.db")
    store = Store(path)
    store.write([(INSERT, (f"r{i:05d}" + "x" * 200, i)) for i in range(2000)]).wait()
    store.close()
    _corrupt_a_page_of(path, "reservation_user")
    with open(path, "rb") as fh:
        before = fh.read()
    store = Store(path, verify_later=True)
    try:
        assert len(list(store.rows("SELECT name FROM reservation"))) == 2000
        with pytest.raises(StoreError, match="is corrupt"):
            store.write([(INSERT, ("late", 1))]).wait()
        with pytest.raises(StoreError, match=f"state database {path} is corrupt"):
            store.verified()
    finally:
        store.close()
    with open(path, "rb") as fh:
        assert fh.read() == before
    with pytest.raises(StoreError, match="is corrupt"):
        Store(path)  # without verify_later: refused at once, as before


def test_a_start_on_a_corrupt_file_is_refused_before_it_answers(tmp_path):
    """cli.build_all reads every record while the file is checked, then refuses it."""
    from wfm_orchestrator.cli import build_all
    from wfm_orchestrator.config import parse_config

    path = tmp_path / "wfm.conf"
    text = SMALL_CONF.format(state_db=str(tmp_path / "s.db"), queue_policy="fifo")
    path.write_text(text)
    config = parse_config(text, str(path))
    store = Store(config.state_db)
    store.write([(INSERT, (f"r{i:05d}" + "x" * 200, i)) for i in range(2000)]).wait()
    store.close()
    _corrupt_a_page_of(config.state_db, "reservation_user")
    with pytest.raises(StoreError, match="is corrupt"):
        build_all(config)


def test_a_large_database_is_not_checked_in_the_ended_steps_history(tmp_path, monkeypatch):
    """Above FULL_CHECK_BYTES the step history (read on demand, not at start) is left to
    SQLite's checks as it is read: the start goes on."""
    path = str(tmp_path / "s.db")
    store = Store(path)
    store.write([("INSERT INTO step (name, user, request, launch_id, phase, created, updated,"
                  " ended) VALUES (?, 'alice', '{}', 'l', 'DONE', ?, ?, ?)",
                  (f"s{i:05d}" + "x" * 200, i, i, i)) for i in range(2000)]).wait()
    store.close()
    _corrupt_a_page_of(path, "step")
    with pytest.raises(StoreError, match="is corrupt|malformed"):
        Store(path)  # small: checked whole
    monkeypatch.setattr("wfm_orchestrator.store_sqlite.FULL_CHECK_BYTES", 0)
    Store(path).close()


# --- both engines: schema versions, types; PostgreSQL: what only it does ----------------


def test_a_database_versioned_by_user_version_alone_is_adopted(tmp_path):
    """A database made by an orchestrator before schema_migration (PRAGMA user_version
    only, as its _migrate did) keeps its rows; the table records its versions, time
    unknown; user_version stays for older orchestrators; a second start writes nothing."""
    path = str(tmp_path / "old.db")
    conn = sqlite_db_as_before(path, len(MIGRATIONS))
    conn.execute(INSERT, ("a", 1))
    conn.close()
    store = Store(path)
    rows = [tuple(r) for r in store.query("SELECT version, applied FROM schema_migration"
                                          " ORDER BY version")]
    assert [r["name"] for r in store.query("SELECT name FROM reservation")] == ["a"]
    store.close()
    assert rows == [(v, None) for v in range(1, len(MIGRATIONS) + 1)]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.close()
    before = os.stat(path).st_mtime_ns, os.path.getsize(path)
    Store(path).close()
    assert (os.stat(path).st_mtime_ns, os.path.getsize(path)) == before


def test_a_new_database_records_each_migration(state_db):
    store = Store(state_db)
    rows = store.query("SELECT version, applied FROM schema_migration ORDER BY version")
    store.close()
    assert [r["version"] for r in rows] == list(range(1, len(MIGRATIONS) + 1))
    assert all(r["applied"] > 1e9 for r in rows)


def test_timestamps_keep_their_microseconds(state_db):
    """REAL columns are 8-byte floats in both engines (PostgreSQL's real would keep ~7
    digits: a 2026 timestamp to the minute)."""
    store = Store(state_db)
    now = 1796641768.835624
    store.write([("INSERT INTO datanode_drain (name, reason, since) VALUES (?, ?, ?)",
                  ("dn1", "disk", now))]).wait()
    store.write([(INSERT, ("a", 2**40))]).wait()  # seq: past 32 bits
    [row] = store.query("SELECT since FROM datanode_drain")
    [res] = store.query('SELECT seq, "user" FROM reservation')
    store.close()
    assert row["since"] == now
    assert (res["seq"], res["user"]) == (2**40, "alice")  # the column, not the SQL user


def test_newer_schema_is_refused_on_postgresql(pg_state_db):
    Store(pg_state_db).close()
    committed_write(pg_state_db, "INSERT INTO schema_migration (version) VALUES (%s)",
                    (len(MIGRATIONS) + 1,))
    with pytest.raises(StoreError, match="newer than this orchestrator"):
        Store(pg_state_db)


def test_a_postgresql_schema_of_another_application_is_refused_untouched(pg_state_db):
    committed_write(pg_state_db, "CREATE TABLE mine (x integer)")
    with pytest.raises(StoreError, match="another application"):
        Store(pg_state_db)
    assert committed(pg_state_db, "SELECT table_name FROM information_schema.tables"
                     " WHERE table_schema = current_schema()") == [("mine",)]


def committed_write(state_db: str, sql: str, params: tuple = ()) -> None:
    import psycopg

    with psycopg.connect(state_db) as conn:
        conn.execute(sql, params)


def test_the_password_reaches_no_error_nor_log_line(ha_dsn, pg_state_db, caplog):
    """A database that cannot be reached: the error names it without its password; a
    good one: nothing the store logs holds it."""
    password = ha_dsn.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    wrong = "postgresql://wfm:Wrong-Secret-42@127.0.0.1:1/wfm?connect_timeout=5"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StoreError, match="cannot connect") as refused:
        Store(wrong)
    assert "Wrong-Secret-42" not in str(refused.value) and "wfm:***@" in str(refused.value)
    store = Store(pg_state_db)
    bad = store.write([(INSERT, ("a", 1)), (INSERT, ("a", 1))])
    with pytest.raises(CommitRefused):
        bad.wait()
    store.close()
    assert "schema migration" in caplog.text and "synchronous standby" in caplog.text
    assert password not in caplog.text and "Wrong-Secret-42" not in caplog.text


def test_a_commit_that_would_not_wait_for_a_standby_is_warned(pg_state_db, caplog):
    """synchronous_commit = local: commits return before the standby has them."""
    caplog.set_level(logging.INFO)
    Store(pg_state_db + "%20-csynchronous_commit%3Dlocal").close()
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "does not wait for a standby" in warned[0].getMessage()
    assert "synchronous_commit = local" in warned[0].getMessage()
    caplog.clear()
    Store(pg_state_db).close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_silent_server_is_given_up_unless_state_db_says_otherwise():
    """A server cut off by the network sends no RST: the store's sessions carry
    tcp_user_timeout and TCP keepalives (store_postgresql.DEAD_SERVER), and a value the
    URL gives wins."""
    pytest.importorskip("psycopg")
    from psycopg import conninfo

    from wfm_orchestrator.store_postgresql import DEAD_SERVER, session_conninfo

    params = conninfo.conninfo_to_dict(session_conninfo("postgresql://u:p@h1,h2/db"))
    assert {k: params[k] for k in DEAD_SERVER} == DEAD_SERVER
    assert int(params["tcp_user_timeout"]) <= 15000 and params["keepalives"] == "1"
    given = conninfo.conninfo_to_dict(session_conninfo(
        "postgresql://u:p@h1/db?tcp_user_timeout=3000&keepalives_idle=1&connect_timeout=2"))
    assert (given["tcp_user_timeout"], given["keepalives_idle"], given["connect_timeout"]) \
        == ("3000", "1", "2")


def test_the_host_that_last_accepted_a_session_is_tried_first():
    """``preferring`` moves one host of a multi-host URL to the front, its port (and
    hostaddr) with it; one host, or an index out of range, changes nothing."""
    pytest.importorskip("psycopg")
    from psycopg import conninfo

    from wfm_orchestrator.store_postgresql import preferring

    dsn = "host=a,b,c port=1,2,3 hostaddr=10.0.0.1,10.0.0.2,10.0.0.3 dbname=wfm"
    moved = conninfo.conninfo_to_dict(preferring(dsn, 2))
    assert (moved["host"], moved["port"], moved["hostaddr"]) == \
        ("c,a,b", "3,1,2", "10.0.0.3,10.0.0.1,10.0.0.2")
    assert moved["dbname"] == "wfm"
    one_port = conninfo.conninfo_to_dict(preferring("host=a,b port=5432 dbname=wfm", 1))
    assert (one_port["host"], one_port["port"]) == ("b,a", "5432")
    assert preferring(dsn, 0) == dsn and preferring(dsn, 3) == dsn
    assert preferring("host=a port=1 dbname=wfm", 1) == "host=a port=1 dbname=wfm"
