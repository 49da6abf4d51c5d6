"""SQLite persistence: the durable copy of every accepted request and its state.

* WAL + ``synchronous=FULL``: a commit survives a crash or power loss.
* One writer thread owns the write connection and commits whatever the
  request threads have queued meanwhile in one transaction (group commit):
  one fsync for many requests. ``Store.write`` queues the statements and
  returns a ticket; ``Store.flush`` hands what is queued to the writer. The
  caller answers its client only once the ticket is committed: it waits
  (``ticket.wait()`` flushes first, so a waiter never waits for a flush that
  nobody will do) or, on the HTTP event loop, the server holds the answer and
  flushes once per loop turn: one commit for all the connections it served.
* A failed batch calls each distinct ``on_failure`` of its writes once,
  on the writer thread, before their tickets finish: the owner of the
  in-memory state reloads it whichever thread served the request.
* A batch runs as one transaction, runs of the same statement through one
  ``executemany``. If any statement fails, the batch is rolled back and run
  again with each request's statements inside a SAVEPOINT, so that one
  faulty write fails alone instead of failing the whole batch.
* The file is claimed with an exclusive ``flock`` on ``<db>.lock`` so that a
  second orchestrator on the same database refuses to start; a foreign or
  corrupt file is refused and never overwritten.
* The directory is 0700 and every file 0600 whatever the umask (they hold
  users' tokens): state_files.py.
* Schema migrations are versioned with ``PRAGMA user_version``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from . import state_files
from .errors import CommitRefused, CommitTimeout, StoreError, WaitOnEventLoop

log = logging.getLogger(__name__)

SLOW_COMMIT = 1.0  # seconds
# At start a database up to this size gets SQLite's quick_check whole; a larger one every
# table but the ended steps' history (Store._check).
FULL_CHECK_BYTES = 64 << 20
HISTORY_TABLES = frozenset({"step", "step_job"})

APPLICATION_ID = 0x57464D4F  # "WFMO": marks a database as ours
Statement = tuple[str, Sequence[Any]]

# Statements are split on ';' when applied: keep ';' out of the comments.
MIGRATIONS: list[str] = [
    # 1: reservations of the Resource Manager
    """
    CREATE TABLE reservation (
        name      TEXT PRIMARY KEY,
        user      TEXT NOT NULL,
        type      TEXT NOT NULL,
        request   TEXT NOT NULL,      -- canonical JSON of the validated request
        token     TEXT,               -- user_slurm_token, NULL once released
        state     TEXT NOT NULL,      -- QUEUED | FREE | ALLOCATED | RELEASED
        seq       INTEGER NOT NULL,   -- arrival order (queue order)
        placement TEXT,               -- JSON [[server, [core ids], msize, ssize], ...]
        detail    TEXT NOT NULL DEFAULT '',
        created   REAL NOT NULL,
        updated   REAL NOT NULL
    );
    CREATE INDEX reservation_user ON reservation(user);
    CREATE INDEX reservation_state ON reservation(state, seq);
    """,
    # 2: the Slurm job of each ephemeral service
    """
    CREATE TABLE service_job (
        name      TEXT PRIMARY KEY,   -- the reservation / service name
        seq       INTEGER NOT NULL,   -- the reservation's seq: part of the job's tag
        job_id    INTEGER,            -- NULL until submitted
        state     TEXT NOT NULL DEFAULT '',
        reason    TEXT NOT NULL DEFAULT '',
        nodes     TEXT NOT NULL DEFAULT '',
        exit_code INTEGER,
        error     TEXT NOT NULL DEFAULT '',
        release_requested REAL,      -- when the release was asked, NULL before
        updated   REAL NOT NULL
    );
    """,
    # 3: workflow steps (steps.py) and their Slurm jobs (data movers and the step job)
    """
    CREATE TABLE step (
        name      TEXT PRIMARY KEY,
        user      TEXT NOT NULL,
        request   TEXT NOT NULL,      -- canonical JSON of the validated launch request
        launch_id TEXT NOT NULL,      -- part of the jobs' tags (comment)
        phase     TEXT NOT NULL,      -- WAITING | SUBMITTED | FAILED | DONE
        detail    TEXT NOT NULL DEFAULT '',
        abort_requested REAL,         -- when step/abort was asked, NULL before
        created   REAL NOT NULL,
        updated   REAL NOT NULL
    );
    CREATE INDEX step_user ON step(user);
    CREATE TABLE step_job (
        step      TEXT NOT NULL,
        key       TEXT NOT NULL,      -- main, or dm:<datamover name>
        job_id    INTEGER,
        state     TEXT NOT NULL DEFAULT '',
        reason    TEXT NOT NULL DEFAULT '',
        nodes     TEXT NOT NULL DEFAULT '',
        exit_code INTEGER,
        progress  TEXT NOT NULL DEFAULT '',
        progress_time REAL,
        updated   REAL NOT NULL,
        PRIMARY KEY (step, key)
    );
    """,
    # 4: the random nonce of a service's job tag ('' in rows stored before it: their
    # jobs keep the tag they were submitted with)
    """
    ALTER TABLE service_job ADD COLUMN nonce TEXT NOT NULL DEFAULT ''
    """,
    # 5: the per-step secret its data movers send with their progress ('' for the steps
    # launched before: no mover can prove it belongs to them, so their progress is refused)
    """
    ALTER TABLE step ADD COLUMN mover_secret TEXT NOT NULL DEFAULT ''
    """,
    # 6: the Slurm job that bound a reservation (GET server/allocation with job_id): only
    # that job's teardown may release it (NULL in rows bound before, or without a job id)
    """
    ALTER TABLE reservation ADD COLUMN bound_job INTEGER
    """,
    # 7: when a reservation took its resources and who first claimed it (unclaimed_timeout).
    # Reservations holding resources before this version count as claimed: an upgrade
    # releases nothing.
    """
    ALTER TABLE reservation ADD COLUMN held_since REAL;
    ALTER TABLE reservation ADD COLUMN claimed TEXT NOT NULL DEFAULT '';
    UPDATE reservation SET claimed = 'held before unclaimed_timeout existed'
        WHERE state IN ('FREE', 'ALLOCATED')
    """,
    # 8: datanodes an administrator drained (no row: the datanode takes placements)
    """
    CREATE TABLE datanode_drain (
        name      TEXT PRIMARY KEY,   -- a Datanode of wfm.conf
        reason    TEXT NOT NULL,      -- what the administrator said (drain --reason)
        since     REAL NOT NULL
    )
    """,
    # 9: a bound service job Slurm kept PENDING is replaced (stuck_job_timeout): when the
    # job entered its Slurm state (NULL in rows stored before: their 'updated' counts),
    # the replaced job still to be cancelled, and how many were replaced and the last why
    """
    ALTER TABLE service_job ADD COLUMN state_since REAL;
    ALTER TABLE service_job ADD COLUMN replaced_job INTEGER;
    ALTER TABLE service_job ADD COLUMN replacements INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE service_job ADD COLUMN replaced_why TEXT NOT NULL DEFAULT ''
    """,
    # 10: an ended step's last change (the start of its step_retention, its status' time),
    # NULL while it is followed, and its status and detail as derived from the rows written
    # with them: a start loads only the steps without it; the others are read on demand, and
    # the lists read their status without their request and jobs. Steps stored before get
    # them at their first start.
    """
    ALTER TABLE step ADD COLUMN ended REAL;
    ALTER TABLE step ADD COLUMN status TEXT NOT NULL DEFAULT '';
    ALTER TABLE step ADD COLUMN status_detail TEXT NOT NULL DEFAULT '';
    CREATE INDEX step_ended ON step(ended);
    CREATE INDEX step_order ON step(created, name);
    CREATE INDEX step_user_order ON step(user, created, name);
    CREATE INDEX step_status ON step(status) WHERE ended IS NOT NULL
    """,
]


class Ticket:
    """Completion of one queued write: ``wait()`` returns once it is committed.

    ``add_done_callback`` is for code that must not wait (the HTTP event
    loop): it is called back from the writer thread instead.
    """

    __slots__ = ("_done", "_finished", "_error", "_callbacks", "_flush", "_on_failure")

    def __init__(self, flush: Callable[[], None] | None = None,
                 on_failure: Callable[[], None] | None = None) -> None:
        # A lock held until the commit: cheaper to make than an Event (one per request).
        self._done = threading.Lock()
        self._done.acquire()
        self._finished = False
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Ticket], None]] | None = None
        self._flush = flush
        self._on_failure = on_failure

    def wait(self, timeout: float | None = 30.0) -> None:
        """Hand what is still queued to the writer, then wait for this write's commit.

        Raises ``WaitOnEventLoop`` on a thread that declared it must never
        block (``refuse_waits``), ``CommitTimeout`` or ``CommitRefused``.
        """
        if not self._finished:
            if getattr(_thread, "refuses_waits", False):
                raise WaitOnEventLoop("a commit was waited for on the server's event loop")
            if self._flush is not None:
                self._flush()  # our write may still be queued: nobody else may flush it
            if not self._done.acquire(timeout=-1 if timeout is None else timeout):
                raise CommitTimeout(timeout)
            self._done.release()  # for the next waiter
        if self._error is not None:
            raise CommitRefused(self._error)

    @property
    def done(self) -> bool:
        """Committed or refused."""
        return self._finished

    @property
    def error(self) -> BaseException | None:
        """Why the write was refused (None while pending or once committed)."""
        return self._error

    def failure(self) -> CommitRefused | None:
        """What ``wait()`` raises for a refused write (None while pending or once committed)."""
        return None if self._error is None else CommitRefused(self._error)

    def add_done_callback(self, callback: Callable[[Ticket], None]) -> None:
        """Call ``callback(ticket)`` once committed or refused (now, if already done)."""
        with _CALLBACKS:
            if not self._finished:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(callback)
                return
        callback(self)

    def _finish(self, error: BaseException | None = None) -> None:
        with _CALLBACKS:
            self._error = error
            self._finished = True
            callbacks, self._callbacks = self._callbacks, None
        self._done.release()
        for callback in callbacks or ():
            try:
                callback(self)
            except Exception:  # noqa: BLE001 - one bad callback must not stop the writer
                log.exception("state database: commit callback failed")


# Guards the done flag against a callback registered while the writer finishes.
_CALLBACKS = threading.Lock()
_thread = threading.local()

DONE = Ticket()
DONE._finish()


def refuse_waits() -> None:
    """Declare the calling thread one that must never block: ``Ticket.wait`` raises there.

    Called by the HTTP server on its event-loop thread (http/server.py): a
    wait there would stall every connection, and could never end if the
    write were still queued for the end of the loop's turn.
    """
    _thread.refuses_waits = True


class Store:
    def __init__(self, path: str, max_batch: int = 256):
        self.path = path
        self._max_batch = max_batch
        # Called on the writer thread after each batch: (writes, seconds, refused).
        # The metrics edge (api/metrics.py) counts commits with it; nothing waits on it.
        self.on_commit: Callable[[int, float, bool], None] | None = None
        self._lock_fd = self._claim(path)
        try:
            self._check_file(path)
            self._make_private(path)
            self._conn = self._connect(path)
            self._migrate()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._queue: queue.SimpleQueue[list[tuple[list[Statement], Ticket]] | None] = \
            queue.SimpleQueue()
        # Writes not yet handed to the writer (flush, or a wait on any ticket).
        self._pending: list[tuple[list[Statement], Ticket]] = []
        self._pending_lock = threading.Lock()
        self._writer = threading.Thread(target=self._write_loop, name="store-writer", daemon=True)
        self._writer.start()

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

    def _connect(self, path: str) -> sqlite3.Connection:
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
            check = Store._check(conn, path)
            if check != "ok":
                conn.close()
                raise StoreError(f"state database {path} is corrupt: {check}")
            if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise StoreError(f"cannot put {path} in WAL mode")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as e:
            raise StoreError(f"state database {path} is unusable: {e}") from e
        return conn

    @staticmethod
    def _check(conn: sqlite3.Connection, path: str) -> str:
        """SQLite's quick_check of the database ("ok"), before anything is read from it.

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

    def _migrate(self) -> None:
        conn = self._conn
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(
                f"state database {self.path} has schema version {version}, newer than this "
                f"orchestrator knows ({len(MIGRATIONS)}): upgrade the orchestrator"
            )
        for number in range(version, len(MIGRATIONS)):
            log.info("state database %s: applying schema migration %d", self.path, number + 1)
            conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in MIGRATIONS[number].split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {number + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # --- reading (at start, before the writer is busy) ----------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Read with a connection of its own (WAL readers never block the writer)."""
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def rows(self, sql: str, params: Sequence[Any] = (), chunk: int = 4096
             ) -> Iterator[tuple[Any, ...]]:
        """Stream the rows of ``sql`` as plain tuples, ``chunk`` at a time, on a connection
        of its own: a start reads every live record, and a list of all of them at once
        costs its whole size again for a moment (and leaves memory fragmented)."""
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

    # --- writing -------------------------------------------------------------

    def write(self, statements: Iterable[Statement],
              on_failure: Callable[[], None] | None = None) -> Ticket:
        """Queue statements to run in one savepoint; commit order = call order.

        Nothing reaches the writer before ``flush()`` or a ``wait()`` on any
        ticket. ``on_failure`` is called (on the writer thread, once per batch)
        if the batch holding these statements is refused.
        """
        ticket = Ticket(self.flush, on_failure)
        with self._pending_lock:
            self._pending.append((list(statements), ticket))
        return ticket

    def flush(self) -> None:
        """Hand the queued writes to the writer."""
        if not self._pending:
            return  # most loop turns: nothing written
        with self._pending_lock:
            # Under the lock: writes reach the writer in call order.
            if self._pending:
                self._queue.put(self._pending)
                self._pending = []

    def _write_loop(self) -> None:
        conn = self._conn
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = list(item)
            stop = False
            while len(batch) < self._max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.extend(more)
            self._commit(conn, batch, self.on_commit)
            if stop:
                return

    @classmethod
    def _commit(cls, conn: sqlite3.Connection,
                batch: list[tuple[list[Statement], Ticket]],
                on_commit: Callable[[int, float, bool], None] | None = None) -> None:
        started = time.monotonic()
        refused = False
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                cls._run_all(conn, batch)
                results: list[BaseException | None] = [None] * len(batch)
            except sqlite3.Error:
                # Some write is faulty: redo the batch write by write, so that it fails alone.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                results = cls._run_each(conn, batch)
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            log.critical("state database commit failed: %s", e)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            results = [e] * len(batch)
            refused = True
        took = time.monotonic() - started
        if took >= SLOW_COMMIT:
            # Every response of the batch waited this long: the first thing to
            # look at when clients see slow answers (disk, fsync, filesystem).
            log.warning("state database: a commit of %d write(s) took %.1f s", len(batch), took)
        if on_commit is not None:
            try:
                on_commit(len(batch), took, refused)
            except Exception:  # noqa: BLE001 - counting must never stop the writer
                log.exception("state database: commit observer failed")
        cls._recover(batch, results)
        for (_, ticket), error in zip(batch, results, strict=True):
            ticket._finish(error)

    @staticmethod
    def _recover(batch: list[tuple[list[Statement], Ticket]],
                 results: list[BaseException | None]) -> None:
        """Each distinct on_failure of the refused writes, once, before any answer leaves."""
        callbacks = dict.fromkeys(ticket._on_failure for (_, ticket), error
                                  in zip(batch, results, strict=True)
                                  if error is not None and ticket._on_failure is not None)
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - the writer must finish the batch's tickets
                log.exception("state database: recovering from a refused write failed")

    @staticmethod
    def _run_all(conn: sqlite3.Connection, batch: list[tuple[list[Statement], Ticket]]) -> None:
        """Every statement in order; runs of the same statement go in one executemany."""
        sql_run = ""
        params_run: list[Sequence[Any]] = []
        for statements, _ in batch:
            for sql, params in statements:
                if sql != sql_run:
                    if params_run:
                        conn.executemany(sql_run, params_run)
                    sql_run, params_run = sql, []
                params_run.append(params)
        if params_run:
            conn.executemany(sql_run, params_run)

    @staticmethod
    def _run_each(conn: sqlite3.Connection,
                  batch: list[tuple[list[Statement], Ticket]]) -> list[BaseException | None]:
        results: list[BaseException | None] = []
        for statements, _ in batch:
            conn.execute("SAVEPOINT req")
            try:
                for sql, params in statements:
                    conn.execute(sql, params)
                conn.execute("RELEASE req")
                results.append(None)
            except sqlite3.Error as e:
                log.error("state database write failed and was rolled back: %s", e)
                conn.execute("ROLLBACK TO req")
                conn.execute("RELEASE req")
                results.append(e)
        return results

    def close(self) -> None:
        self.flush()
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join(timeout=30)
        self._conn.close()
        os.close(self._lock_fd)
