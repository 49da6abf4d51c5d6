"""The SQLite engine of the store (store.py): one file on the admin node.

* WAL + ``synchronous=FULL``: a commit survives a crash or power loss.
* The file is claimed with an exclusive ``flock`` on ``<db>.lock`` so that a
  second orchestrator on the same database refuses to start; a foreign or
  corrupt file is refused and never overwritten: SQLite's check runs before the first
  write, on a thread of its own (a start reads its records meanwhile, ``verified``).
* The directory is 0700 and every file 0600 whatever the umask (they hold
  users' tokens): state_files.py.
* Reads run on connections of their own (WAL readers never block the writer).
* Schema versions: the ``schema_migration`` table both engines use, and ``PRAGMA
  user_version`` kept equal to its last version (what orchestrators before that table
  read: an older one still refuses a newer database). A database versioned by
  ``user_version`` alone is adopted at its first start.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from . import state_files
from .errors import StoreError
from .store_preload import Decode, Preload

# At start a database up to this size gets SQLite's quick_check whole; a larger one every
# table but the ended steps' history (SQLiteBackend._check).
FULL_CHECK_BYTES = 64 << 20
HISTORY_TABLES = frozenset({"step", "step_job"})
CHECK_MMAP_BYTES = 1 << 31

APPLICATION_ID = 0x57464D4F  # "WFMO": marks a database as ours


class SQLiteBackend:
    """The write connection, its transactions, and the reads, of one SQLite file."""

    Error = sqlite3.Error
    engine = "sqlite"

    def __init__(self, path: str, preload: tuple[str, Decode, int] | None = None) -> None:
        """``preload``: (sql, decode, schema version) for a start's reader process
        (store_preload.py), forked here: once the file is ours, before any thread."""
        self.path = self.name = path
        self._lock_fd = self._claim(path)
        self._preload: Preload | None = None
        self._preload_sql = ""
        try:
            self._check_file(path)
            self._make_private(path)
            if preload is not None:
                self._preload_sql, decode, schema = preload
                self._preload = Preload.start(path, self._preload_sql, decode, schema,
                                              self._lock_fd)
            self.conn, checked = self._connect(path)
            self._check_started = None if checked else _Check(path)
        except BaseException:
            if self._preload is not None:
                self._preload.close()
            os.close(self._lock_fd)
            raise

    # --- opening ------------------------------------------------------------

    @staticmethod
    def _claim(path: str) -> int:
        # The lock sits beside the real file: a path through a symbolic link to
        # the same database must meet the same lock.
        real = os.path.realpath(path)
        lock = real + ".lock"
        directory = os.path.dirname(lock)
        try:
            state_files.prepare_directory(directory, real)
        except OSError as e:
            raise StoreError(f"cannot open the state database directory {directory}: {e}") from e
        try:
            fd = state_files.open_private(lock, os.O_RDWR)
        except OSError as e:
            raise StoreError(f"cannot open the state database lock {lock}: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                f"state database {path} is in use by another orchestrator (pid {holder}); "
                "only one may run on a database"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd

    @staticmethod
    def _check_file(path: str) -> None:
        try:
            with open(path, "rb") as fh:
                header = fh.read(16)
        except FileNotFoundError:
            return
        except OSError as e:
            raise StoreError(f"cannot read the state database {path}: {e}") from e
        if header and header != b"SQLite format 3\0":
            raise StoreError(
                f"{path} is not an SQLite database (refusing to overwrite it; "
                "point state_db at another file or move this one away)"
            )

    @staticmethod
    def _make_private(path: str) -> None:
        # Once the lock is ours (a running orchestrator's files are its own business)
        # and before SQLite opens the file: it gives -wal and -shm the database's mode.
        real = os.path.realpath(path)
        try:
            state_files.tighten(real)
        except OSError as e:
            raise StoreError(
                f"state_db: cannot make {real} and its -wal/-shm private (mode 0600): {e}; "
                "run the orchestrator as the user owning them, or chown them to it"
            ) from e

    @classmethod
    def _connect(cls, path: str) -> tuple[sqlite3.Connection, bool]:
        """The write connection, and whether the file was checked already."""
        checked = False
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 5000")
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
            ).fetchone()[0]
            if app_id not in (0, APPLICATION_ID) or (app_id == 0 and tables):
                conn.close()
                raise StoreError(
                    f"{path} is an SQLite database of another application "
                    f"(application_id {app_id:#x}, {tables} tables): refusing to use it"
                )
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                # Setting WAL writes the header: a file not in WAL yet (new, or made by
                # another tool) is checked first. Ours are in WAL: checked on a thread.
                check = cls._check(conn, path)
                if check != "ok":
                    conn.close()
                    raise StoreError(f"state database {path} is corrupt: {check}")
                checked = True
                if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                    raise StoreError(f"cannot put {path} in WAL mode")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as e:
            raise StoreError(f"state database {path} is unusable: {e}") from e
        return conn, checked

    def verified(self) -> None:
        """Once SQLite's check of the file (started when it was opened) said "ok"; else
        ``StoreError`` naming what it found. Every write waits for it (``begin``)."""
        if self._check_started is not None:
            check = self._check_started.result()
            if check != "ok":
                raise StoreError(f"state database {self.path} is corrupt: {check}")
            self._check_started = None

    @staticmethod
    def _check(conn: sqlite3.Connection, path: str) -> str:
        """SQLite's quick_check of the database ("ok"), before anything is written to it
        (``_Check``).

        It reads every page: with a year of ended steps (1,000,000: ~1 GB) that alone took
        ~2 s of every start. A database larger than FULL_CHECK_BYTES is therefore checked
        table by table, all but the ended steps' history (HISTORY_TABLES), which a start
        does not read (only its live rows, through an index): SQLite checks those pages
        as it reads them, and a corrupt one fails that read.
        """
        try:
            size = os.path.getsize(path)
        except OSError:
            size = 0
        if size <= FULL_CHECK_BYTES:
            return conn.execute("PRAGMA quick_check").fetchone()[0]
        tables = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        for table in tables:
            if table not in HISTORY_TABLES:
                check = conn.execute("SELECT * FROM pragma_quick_check(?)",
                                     (table,)).fetchone()[0]
                if check != "ok":
                    return check
        return "ok"

    # --- schema versions ------------------------------------------------------

    def schema_version(self, known: int) -> int:
        """The database's schema version; the ``schema_migration`` table made, or filled
        with the versions ``user_version`` says were applied (adoption: their time is
        unknown, NULL), unless the database is newer than ``known`` (it is left as is)."""
        conn = self.conn
        user_version = conn.execute("PRAGMA user_version").fetchone()[0]
        has_table = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                                 " AND name = 'schema_migration'").fetchone()[0]
        recorded = set()
        if has_table:
            recorded = {row[0] for row in conn.execute("SELECT version FROM schema_migration")}
        version = max(user_version, max(recorded, default=0))
        if version > known or (has_table and recorded >= set(range(1, version + 1))):
            return version
        self.verified()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migration"
                         " (version INTEGER PRIMARY KEY, applied DOUBLE PRECISION)")
            conn.executemany("INSERT INTO schema_migration (version, applied) VALUES (?, NULL)",
                             [(v,) for v in range(1, version + 1) if v not in recorded])
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return version

    def record_migration(self, version: int, applied: float) -> None:
        """Within the migration's transaction."""
        self.conn.execute("INSERT INTO schema_migration (version, applied) VALUES (?, ?)",
                          (version, applied))
        self.conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        self.conn.execute(f"PRAGMA user_version = {version}")

    @staticmethod
    def ddl(statement: str) -> str:
        return statement

    # --- the writer's transactions ------------------------------------------

    def ready(self) -> None:
        """Before each batch: nothing to reconnect (the file does not go away)."""

    @staticmethod
    def pipeline() -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    @staticmethod
    def lost() -> bool:
        return False

    def begin(self) -> None:
        self.verified()
        self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.conn.execute(sql, params)

    def executemany(self, sql: str, params: list[Sequence[Any]]) -> None:
        self.conn.executemany(sql, params)

    # --- reading --------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def preloaded(self, sql: str) -> Iterator[list[Any]] | None:
        """The reader process' decoded rows of ``sql``, once; None without one."""
        preload, self._preload = self._preload, None
        if preload is None or sql != self._preload_sql:
            if preload is not None:
                preload.close()
            return None
        return preload.chunks()

    def rows(self, sql: str, params: Sequence[Any], chunk: int) -> Iterator[tuple[Any, ...]]:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            cursor = conn.execute(sql, params)
            while batch := cursor.fetchmany(chunk):
                yield from batch
        except sqlite3.DatabaseError as e:
            # A page SQLite finds corrupt as it reads it (the step history is not checked
            # at start: _check): the state database's error, for the start and the API.
            raise StoreError(f"state database {self.path} is unusable: {e}") from e
        finally:
            conn.close()

    def close(self) -> None:
        if self._preload is not None:
            self._preload.close()
        self.conn.close()
        os.close(self._lock_fd)


class _Check:
    """``SQLiteBackend._check`` of a file on a thread and a connection of their own.

    SQLite runs the check without Python's lock, so a start reads and builds its records
    meanwhile on the other CPU; nothing is written before its verdict (``verified``).
    Cold, the check alone took 0.3 s of a restart with 100,000 reservations: it reads
    the indexes in key order, page by page, where the start's read of the table in file
    order is served by the kernel's read-ahead; it now reads through a memory map
    (benchmarks/README.md, "Restart").
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._verdict = "not checked"
        self._thread = threading.Thread(target=self._run, name="store-check", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            try:
                # Memory-mapped, a page the check wants brings the pages around it in one
                # read (the kernel's read-around): the indexes, read in key order, cost
                # 0.07 s cold instead of 0.39 s one pread at a time (100,000 reservations).
                # Safe here: nothing writes, let alone truncates, the file before the
                # verdict. SQLite caps the size at its own maximum.
                conn.execute(f"PRAGMA mmap_size = {CHECK_MMAP_BYTES}")
                self._verdict = SQLiteBackend._check(conn, self._path)
            finally:
                conn.close()
        except sqlite3.DatabaseError as e:
            self._verdict = str(e)

    def result(self) -> str:
        self._thread.join()
        return self._verdict
