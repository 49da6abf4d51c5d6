"""Persistence: the durable copy of every accepted request and its state, in SQLite
(store_sqlite.py, the default) or PostgreSQL (store_postgresql.py), as ``state_db`` says
(state_db.py). The engine is a small object (connect, transactions, reads, schema
versions); what follows is the same for both.

* One writer thread owns the write connection and commits whatever the
  request threads have queued meanwhile in one transaction (group commit):
  one fsync (or one round trip to the synchronous standby) for many requests.
  ``Store.write`` queues the statements and
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
* Only one orchestrator writes: the engine refuses to open a database another
  one holds (a flock for SQLite, an advisory lock for PostgreSQL), or, for a serving
  orchestrator on PostgreSQL, the leader lease fences every batch (lease.py): the
  batch's transaction starts with ``wfm_fence(holder, epoch)``, and a deposed leader's
  batch is rolled back, its requests refused (``LeaseLost``) and ``on_deposed`` called.
* Schema migrations are recorded in the ``schema_migration`` table (version, when
  applied) in both engines. The SQL is portable: ``?`` placeholders (translated for
  psycopg), ``"user"`` quoted (a reserved word in PostgreSQL), ``REAL`` columns made
  ``DOUBLE PRECISION`` by the PostgreSQL engine.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from . import state_db
from .errors import CommitRefused, CommitTimeout, StoreError, WaitOnEventLoop
from .lease import FENCE_SQLSTATE, LeaseLost
from .store_sqlite import APPLICATION_ID, SQLiteBackend

__all__ = ["APPLICATION_ID", "DONE", "MIGRATIONS", "Statement", "Store", "Ticket",
           "refuse_waits"]

log = logging.getLogger(__name__)

SLOW_COMMIT = 1.0  # seconds

Statement = tuple[str, Sequence[Any]]

# Statements are split on ';' when applied: keep ';' out of the comments.
MIGRATIONS: list[str] = [
    # 1: reservations of the Resource Manager
    """
    CREATE TABLE reservation (
        name      TEXT PRIMARY KEY,
        "user"    TEXT NOT NULL,
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
    CREATE INDEX reservation_user ON reservation("user");
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
        "user"    TEXT NOT NULL,
        request   TEXT NOT NULL,      -- canonical JSON of the validated launch request
        launch_id TEXT NOT NULL,      -- part of the jobs' tags (comment)
        phase     TEXT NOT NULL,      -- WAITING | SUBMITTED | FAILED | DONE
        detail    TEXT NOT NULL DEFAULT '',
        abort_requested REAL,         -- when step/abort was asked, NULL before
        created   REAL NOT NULL,
        updated   REAL NOT NULL
    );
    CREATE INDEX step_user ON step("user");
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
    CREATE INDEX step_user_order ON step("user", created, name);
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


def open_engine(database: str, lock: bool = True, preload: Any = None) -> Any:
    """The engine ``database`` (a ``state_db`` value, as config.py parsed it) names;
    ``lock``: PostgreSQL's advisory lock (not when the leader lease fences the writes);
    ``preload``: SQLite's reader process (``Store``)."""
    if state_db.is_postgresql(database):
        from .store_postgresql import PostgresBackend  # psycopg: only when configured

        return PostgresBackend(database, lock=lock)
    return SQLiteBackend(state_db.parse(database), preload)


class Store:
    def __init__(self, database: str, max_batch: int = 256, lease: Any = None,
                 verify_later: bool = False,
                 preload: tuple[str, Callable[[Any], list[Any]]] | None = None):
        """``lease``: the leader lease (lease.py) that fences every batch, PostgreSQL only.
        ``verify_later``: return before SQLite's check of the file has said "ok" (it runs
        on a thread; every write waits for it): the caller reads its records meanwhile and
        calls ``verified`` before it answers anyone (a start: cli.build_all).
        ``preload``: (sql, decode) of the rows a start reads first, which SQLite has a
        process of its own read and decode meanwhile (store_preload.py; ``preloaded``)."""
        self._max_batch = max_batch
        # (holder, epoch) checked inside each batch's transaction; None: not fenced.
        self._fencing: tuple[str, int] | None = lease.fencing if lease is not None else None
        # Called (on the writer thread) once a batch was refused by the fence.
        self.on_deposed: Callable[[BaseException], None] | None = None
        # Called on the writer thread after each batch: (writes, seconds, refused).
        # The metrics edge (api/metrics.py) counts commits with it; nothing waits on it.
        self.on_commit: Callable[[int, float, bool], None] | None = None
        self._engine = open_engine(database, lock=lease is None,
                                   preload=preload and (*preload, len(MIGRATIONS)))
        # The file for SQLite; for PostgreSQL the URL without its password (for messages).
        self.path: str = self._engine.name
        self.engine: str = self._engine.engine
        try:
            self._migrate()
            if not verify_later:
                self._engine.verified()
        except self._engine.Error as e:
            self._engine.close()
            # An engine's own error (a role without CREATE, a lost server): the store's.
            raise StoreError(f"state database {self.path} is unusable: "
                             f"{state_db.redact(str(e)).strip()}") from e
        except BaseException:
            self._engine.close()
            raise
        self._queue: queue.SimpleQueue[list[tuple[list[Statement], Ticket]] | None] = \
            queue.SimpleQueue()
        # Writes not yet handed to the writer (flush, or a wait on any ticket).
        self._pending: list[tuple[list[Statement], Ticket]] = []
        self._pending_lock = threading.Lock()
        self._writer = threading.Thread(target=self._write_loop, name="store-writer", daemon=True)
        self._writer.start()

    def _migrate(self) -> None:
        engine = self._engine
        version = engine.schema_version(len(MIGRATIONS))
        if version > len(MIGRATIONS):
            raise StoreError(
                f"state database {self.path} has schema version {version}, newer than this "
                f"orchestrator knows ({len(MIGRATIONS)}): upgrade the orchestrator"
            )
        for number in range(version, len(MIGRATIONS)):
            log.info("state database %s: applying schema migration %d", self.path, number + 1)
            engine.begin()
            try:
                for stmt in MIGRATIONS[number].split(";"):
                    if stmt.strip():
                        engine.execute(engine.ddl(stmt))
                engine.record_migration(number + 1, time.time())
                engine.commit()
            except BaseException:
                engine.rollback()
                raise

    def verified(self) -> None:
        """Return once the database was found sound (SQLite: its check, started when it
        was opened; PostgreSQL checks its own pages); else ``StoreError`` saying what is
        wrong."""
        self._engine.verified()

    # --- reading (at start, before the writer is busy) ----------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Read with a connection of its own (never the writer's): rows read by position
        or column name."""
        return self._engine.query(sql, params)

    def preloaded(self, sql: str) -> Iterator[list[Any]] | None:
        """The rows of ``sql`` decoded by the reader process (``preload``), a chunk at a
        time, once; None when there is none (read them with ``rows``). Iterating raises
        ``PreloadLost`` if the process fails after its first chunk."""
        return self._engine.preloaded(sql)

    def rows(self, sql: str, params: Sequence[Any] = (), chunk: int = 4096
             ) -> Iterator[tuple[Any, ...]]:
        """Stream the rows of ``sql`` as plain tuples, ``chunk`` at a time, on a connection
        of its own: a start reads every live record, and a list of all of them at once
        costs its whole size again for a moment (and leaves memory fragmented)."""
        return self._engine.rows(sql, params, chunk)

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
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[tuple[list[Statement], Ticket]]) -> None:
        engine = self._engine
        started = time.monotonic()
        refused = False
        try:
            engine.ready()
            try:
                # PostgreSQL sends the batch and its COMMIT in one round trip (a pipeline).
                with engine.pipeline():
                    engine.begin()
                    self._fence()
                    self._run_all(batch)
                    # Acknowledged only once this returns: on PostgreSQL with a
                    # synchronous standby, once the standby has it.
                    engine.commit()
                results: list[BaseException | None] = [None] * len(batch)
            except engine.Error as e:
                if engine.lost() or _deposed(e):
                    raise  # no faulty write: the connection is gone, the batch refused
                # Some write is faulty: redo the batch write by write, so that it fails alone.
                engine.rollback()
                engine.begin()
                self._fence()
                results = self._run_each(batch)
                engine.commit()
        except (engine.Error, StoreError) as e:
            message = state_db.redact(str(e)).strip()
            log.critical("state database commit failed: %s", message)
            engine.rollback()
            error: BaseException = e
            if _deposed(e):
                error = LeaseLost(message.splitlines()[0])
                if self.on_deposed is not None:
                    self.on_deposed(error)
            results = [error] * len(batch)
            refused = True
        took = time.monotonic() - started
        if took >= SLOW_COMMIT:
            # Every response of the batch waited this long: the first thing to
            # look at when clients see slow answers (disk, fsync, filesystem, standby).
            log.warning("state database: a commit of %d write(s) took %.1f s", len(batch), took)
        on_commit = self.on_commit
        if on_commit is not None:
            try:
                on_commit(len(batch), took, refused)
            except Exception:  # noqa: BLE001 - counting must never stop the writer
                log.exception("state database: commit observer failed")
        self._recover(batch, results)
        for (_, ticket), error in zip(batch, results, strict=True):
            ticket._finish(error)

    def _fence(self) -> None:
        """First in the batch's transaction: the lease still ours, locked until COMMIT."""
        if self._fencing is not None:
            self._engine.execute("SELECT wfm_fence(?, ?)", self._fencing)

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

    def _run_all(self, batch: list[tuple[list[Statement], Ticket]]) -> None:
        """Every statement in order; runs of the same statement go in one executemany."""
        executemany = self._engine.executemany
        sql_run = ""
        params_run: list[Sequence[Any]] = []
        for statements, _ in batch:
            for sql, params in statements:
                if sql != sql_run:
                    if params_run:
                        executemany(sql_run, params_run)
                    sql_run, params_run = sql, []
                params_run.append(params)
        if params_run:
            executemany(sql_run, params_run)

    def _run_each(self, batch: list[tuple[list[Statement], Ticket]]
                  ) -> list[BaseException | None]:
        engine = self._engine
        results: list[BaseException | None] = []
        for statements, _ in batch:
            engine.execute("SAVEPOINT req")
            try:
                for sql, params in statements:
                    engine.execute(sql, params)
                engine.execute("RELEASE SAVEPOINT req")
                results.append(None)
            except engine.Error as e:
                log.error("state database write failed and was rolled back: %s",
                          state_db.redact(str(e)).strip())
                engine.execute("ROLLBACK TO SAVEPOINT req")
                engine.execute("RELEASE SAVEPOINT req")
                results.append(e)
        return results

    @property
    def running(self) -> bool:
        """Until ``close``: its writer takes writes."""
        return self._writer.is_alive()

    def close(self) -> None:
        self.flush()
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join(timeout=30)
        self._engine.close()


def _deposed(error: BaseException) -> bool:
    """The batch was refused by the lease's fence: another orchestrator leads."""
    return getattr(error, "sqlstate", None) == FENCE_SQLSTATE
