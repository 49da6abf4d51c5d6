import sqlite3
import threading

import pytest

from wfm_orchestrator.errors import StoreError
from wfm_orchestrator.store import APPLICATION_ID, MIGRATIONS, Store

INSERT = ("INSERT INTO reservation (name, user, type, request, state, seq, created, updated)"
          " VALUES (?, 'alice', 'SBB', '{}', 'FREE', ?, 0, 0)")


def test_new_database_is_versioned_and_marked_as_ours(tmp_path):
    """A new database gets the application id, WAL and the latest schema version."""
    path = str(tmp_path / "s.db")
    Store(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_write_is_durable_once_the_ticket_returns(tmp_path):
    """After ticket.wait() the row is committed and visible to another connection."""
    path = str(tmp_path / "s.db")
    store = Store(path)
    store.write([(INSERT, ("a", 1))]).wait()
    assert sqlite3.connect(path).execute("SELECT name FROM reservation").fetchall() == [("a",)]
    store.close()


def test_concurrent_writes_are_grouped_and_all_committed(tmp_path):
    """Many threads writing at once: every write committed exactly once."""
    store = Store(str(tmp_path / "s.db"))
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


def test_a_failing_write_fails_alone(tmp_path):
    """A write that violates a constraint fails its own ticket, not the batch."""
    store = Store(str(tmp_path / "s.db"))
    store.write([(INSERT, ("a", 1))]).wait()
    bad = store.write([(INSERT, ("b", 2)), (INSERT, ("a", 3))])
    good = store.write([(INSERT, ("c", 4))])
    with pytest.raises(StoreError, match="refused a write"):
        bad.wait()
    good.wait()
    names = [r["name"] for r in store.query("SELECT name FROM reservation ORDER BY name")]
    assert names == ["a", "c"]  # b rolled back with its savepoint
    store.close()


def test_second_store_on_the_same_database_is_refused(tmp_path):
    """Only one orchestrator may use a state database."""
    path = str(tmp_path / "s.db")
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
