"""The PostgreSQL engine of the store (store.py), through psycopg 3: imported only when
``state_db`` is a ``postgresql://`` URL (an SQLite start never loads it).

* The writer's connection runs one transaction per batch: the batch is acknowledged
  when ``COMMIT`` returns, which with ``synchronous_commit`` on and
  ``synchronous_standby_names`` set (Patroni's synchronous_mode) is once the synchronous
  standby has the commit. At start both settings are read and a warning logged when a
  commit would not wait for a standby (docs/ha.md).
* One writer per database (and schema). A serving orchestrator opens it with
  ``lock=False``: the leader lease (lease.py) fences each of its batches. Otherwise (the
  command line's offline tools) a session advisory lock, taken at start on a connection
  of its own and held until ``close``, keeps a second one out: the lock goes with its
  connection (a failover ends it); when the writer's connection was lost, the lock is
  checked and taken again before the next batch, or the batch is refused.
* The SQL of the use cases is written once, with ``?`` placeholders: each statement
  text is translated once (cached). The DDL's ``REAL`` is ``DOUBLE PRECISION`` here
  (``real`` is 4 bytes in PostgreSQL: it would truncate timestamps) and its ``INTEGER``
  ``BIGINT`` (Slurm job ids of a federation pass 2**31).
* A server that falls silent (a partition: no RST) is given up after about 10 s
  (``DEAD_SERVER``: TCP keepalives and tcp_user_timeout, unless ``state_db`` sets them),
  the batch in flight refused; each new connection tries first the host that last
  accepted one (``connect``), so that a cut host costs one connect_timeout per failover.
* Reads take an idle connection of a small pool (a connection per read would cost a
  connection set-up per API list); ``rows`` streams through a server-side cursor.
* The password of ``state_db`` never reaches a log line or an error (state_db.redact).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import conninfo

from .errors import StoreError
from .state_db import redact

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = "10"  # seconds, unless state_db gives connect_timeout
# A server cut off by the network (a partition, a dead machine) sends no RST: nothing
# ends a connection to it, and a COMMIT waiting for its answer would wait for the
# kernel's retransmissions (about 15 minutes), the writer with it. These libpq
# parameters, unless state_db gives them, make the kernel give such a connection up
# after about 10 s of silence, and only then: a server that answers its TCP keepalives
# is alive, and its slow commit (a synchronous standby catching up) is waited for, which
# a statement or commit deadline would cut. tcp_user_timeout ends a connection whose
# sent data (the COMMIT) went unacknowledged; keepalives end one that waits for an answer
# in silence (the COMMIT was received, then the network went). The batch in flight is
# then refused: its outcome is unknown, its clients get an error and retry (docs/ha.md).
DEAD_SERVER = {"tcp_user_timeout": "10000", "keepalives": "1", "keepalives_idle": "5",
               "keepalives_interval": "2", "keepalives_count": "3"}
READ_POOL = 4  # idle read connections kept
# The advisory lock's key: one orchestrator per database and schema (its search_path).
_LOCK_KEY = ("SELECT hashtextextended('wfm-orchestrator:' || current_database() || '.'"
             " || current_schema(), 0)")

_TYPES = ((re.compile(r"\bREAL\b"), "DOUBLE PRECISION"), (re.compile(r"\bINTEGER\b"), "BIGINT"))
_SQL: dict[str, str] = {}


# Per host list of a multi-host state_db: the index of the host that last accepted a
# session of this process (the store's writer and readers, the lease: ``connect``).
_last_host: dict[tuple[str, str], int] = {}


def _host_order(params: dict[str, Any]) -> tuple[tuple[str, str], list[tuple[str, str]]] | None:
    """(the key of the host list, its (host, port) pairs) of a multi-host conninfo; None
    for one host, or lists libpq would refuse (a port count that matches nothing)."""
    hosts = str(params.get("host") or "").split(",")
    ports = str(params.get("port") or "").split(",")
    if len(hosts) < 2:
        return None
    if len(ports) == 1:
        ports *= len(hosts)
    if len(ports) != len(hosts):
        return None
    return (str(params.get("host")), str(params.get("port") or "")), list(zip(hosts, ports,
                                                                             strict=True))


def preferring(conninfo_str: str, first: int) -> str:
    """``conninfo_str`` with its ``first`` host (port, hostaddr) moved to the front."""
    params = conninfo.conninfo_to_dict(conninfo_str)
    order = _host_order(params)
    if order is None or not 0 < first < len(order[1]):
        return conninfo_str
    n = len(order[1])
    rank = [first, *(i for i in range(n) if i != first)]
    for name in ("host", "port", "hostaddr"):
        values = str(params.get(name) or "").split(",")
        if len(values) == n:
            params[name] = ",".join(values[i] for i in rank)
    return conninfo.make_conninfo(**params)


def connect(conninfo_str: str, **kwargs: Any) -> psycopg.Connection:
    """``psycopg.connect``, trying first the host of a multi-host ``conninfo_str`` that
    last accepted a session in this process. libpq tries the hosts in their order, and a
    host cut off by the network (no RST) costs connect_timeout before the next is tried:
    after a failover, only the first connection of the process pays it, not every one
    (a takeover's load opens several)."""
    params = conninfo.conninfo_to_dict(conninfo_str)
    order = _host_order(params)
    if order is None:
        return psycopg.connect(conninfo_str, **kwargs)
    key, pairs = order
    conn = psycopg.connect(preferring(conninfo_str, _last_host.get(key, 0)), **kwargs)
    reached = (conn.info.host, str(conn.info.port))
    if reached in pairs:
        _last_host[key] = pairs.index(reached)
    return conn


def _sql(text: str) -> str:
    """``text`` with psycopg's placeholders for SQLite's (a ``%`` doubled)."""
    out = _SQL.get(text)
    if out is None:
        out = _SQL[text] = text.replace("%", "%%").replace("?", "%s")
    return out


class Row(tuple):
    """A row read by ``query``: by position or by column name, like sqlite3.Row."""

    __slots__ = ()
    _index: dict[str, int] = {}

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: psycopg.Cursor) -> Any:
    names = {column.name: i for i, column in enumerate(cursor.description or ())}
    cls = type("Row", (Row,), {"__slots__": (), "_index": names})
    return cls


def session_conninfo(dsn: str) -> str:
    """The libpq parameters of the store's sessions: ``dsn``'s, and the defaults it does
    not give (connect_timeout, the application's name, DEAD_SERVER)."""
    params = conninfo.conninfo_to_dict(dsn)
    params.setdefault("connect_timeout", CONNECT_TIMEOUT)
    params.setdefault("application_name", "wfm-orchestrator")
    for name, value in DEAD_SERVER.items():
        params.setdefault(name, value)
    return conninfo.make_conninfo(**params)


class PostgresBackend:
    """The write connection, its transactions, the advisory lock and the reads."""

    Error = psycopg.Error
    engine = "postgresql"

    def __init__(self, dsn: str, lock: bool = True) -> None:
        self.name = self.path = redact(dsn)
        self._conninfo = session_conninfo(dsn)
        self._idle: list[psycopg.Connection] = []
        self._idle_lock = threading.Lock()
        self._lock_conn: psycopg.Connection | None = None
        self._locking = lock
        self.conn: psycopg.Connection | None = None
        try:
            if lock:
                self._lock_conn = self._take_lock()
            self.conn = self._connect(autocommit=True)
            self._check_durability()
        except BaseException:
            self.close()
            raise

    # --- opening ------------------------------------------------------------

    def _connect(self, autocommit: bool) -> psycopg.Connection:
        try:
            return connect(self._conninfo, autocommit=autocommit)
        except psycopg.Error as e:
            raise StoreError(f"cannot connect to the state database {self.name}: "
                             f"{redact(str(e)).strip()}") from None

    def _take_lock(self) -> psycopg.Connection:
        conn = self._connect(autocommit=True)
        try:
            key = conn.execute(_LOCK_KEY).fetchone()[0]
            if not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
                holder = self._holder(conn, key)
                raise StoreError(
                    f"state database {self.name} is in use by another orchestrator "
                    f"({holder}); only one may run on a database")
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _holder(conn: psycopg.Connection, key: int) -> str:
        try:
            row = conn.execute(
                "SELECT a.pid, a.client_addr, a.application_name FROM pg_locks l"
                " JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory'"
                " AND l.granted AND l.classid::bigint = ((%s >> 32) & 4294967295)"
                " AND l.objid::bigint = (%s & 4294967295) AND l.objsubid = 1",
                (key, key)).fetchone()
        except psycopg.Error:
            return "holder unknown"
        if row is None:
            return "holder unknown"
        return f"server process {row[0]}, client {row[1] or 'local'}, {row[2] or 'unnamed'}"

    def _check_durability(self) -> None:
        conn = self.conn
        assert conn is not None
        try:
            commit = conn.execute("SHOW synchronous_commit").fetchone()[0]
            standbys = conn.execute("SHOW synchronous_standby_names").fetchone()[0]
            conn.rollback()
        except psycopg.Error as e:
            raise StoreError(f"state database {self.name} is unusable: "
                             f"{redact(str(e)).strip()}") from None
        if not standbys.strip() or commit in ("off", "local"):
            log.warning(
                "state database %s: a commit does not wait for a standby "
                "(synchronous_commit = %s, synchronous_standby_names = %r): a failover may "
                "lose acknowledged writes; use Patroni's synchronous_mode (docs/ha.md)",
                self.name, commit, standbys)
        else:
            log.info("state database %s: commits wait for the synchronous standby (%s; "
                     "synchronous_commit = %s)", self.name, standbys, commit)

    # --- schema versions ------------------------------------------------------

    def schema_version(self, known: int) -> int:
        """The database's schema version; the ``schema_migration`` table made in an empty
        schema. A schema holding other tables and no ``schema_migration`` is refused."""
        conn = self.conn
        assert conn is not None
        try:
            tables = {row[0] for row in conn.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema()")} - {"wfm_lease"}  # lease.py's
            schema = conn.execute("SELECT current_schema()").fetchone()[0]
            if "schema_migration" not in tables:
                if tables:
                    raise StoreError(
                        f"state database {self.name}: schema {schema} holds tables of another "
                        f"application ({', '.join(sorted(tables)[:5])}): refusing to use it; "
                        "give the orchestrator a database (or schema) of its own")
                conn.execute("CREATE TABLE schema_migration"
                             " (version INTEGER PRIMARY KEY, applied DOUBLE PRECISION)")
            version = conn.execute(
                "SELECT coalesce(max(version), 0) FROM schema_migration").fetchone()[0]
            conn.commit()
        except BaseException:
            self.rollback()
            raise
        return version

    def record_migration(self, version: int, applied: float) -> None:
        self.execute("INSERT INTO schema_migration (version, applied) VALUES (?, ?)",
                     (version, applied))

    @staticmethod
    def ddl(statement: str) -> str:
        for pattern, name in _TYPES:
            statement = pattern.sub(name, statement)
        return statement

    # --- the writer's transactions ------------------------------------------

    def ready(self) -> None:
        """Before each batch: the writer's connection a failover or a restart of the
        server ended is made again (the batch is refused when that fails), after the
        advisory lock is known to be held: its connection went with the same server,
        most likely, though nothing told it yet (an idle connection learns it is broken
        only when used), so it is asked; without the lock, another orchestrator may be
        writing."""
        if self.conn is not None and not self.conn.broken and not self.conn.closed:
            return
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        log.warning("state database %s: the writer's connection was lost: connecting again",
                    self.name)
        if self._locking:
            self._hold_lock()
        self.conn = self._connect(autocommit=True)

    def _hold_lock(self) -> None:
        conn = self._lock_conn
        if conn is not None and not conn.broken and not conn.closed:
            try:
                conn.execute("SELECT 1")
                return
            except psycopg.Error:
                pass
        if conn is not None:
            conn.close()
            self._lock_conn = None
        log.warning("state database %s: the connection holding the advisory lock was lost: "
                    "taking the lock again", self.name)
        self._lock_conn = self._take_lock()

    def pipeline(self) -> contextlib.AbstractContextManager[Any]:
        """The batch's statements and its COMMIT sent without waiting for each answer: one
        round trip per batch (the commit's, which waits for the standby)."""
        assert self.conn is not None
        return self.conn.pipeline()

    def lost(self) -> bool:
        """The writer's connection is gone (a failover, a restart of the server)."""
        return self.conn is None or self.conn.broken or self.conn.closed

    # The writer's connection is in autocommit mode and its transactions explicit: in a
    # pipeline, psycopg's commit() waits for an answer of its own (a Sync) before the
    # pipeline's end waits again; a COMMIT statement is sent with the batch and answered
    # at the pipeline's one Sync (a batch of 4 writes: ~0.95 -> ~0.72 ms, 30% less CPU).
    # Outside a pipeline (migrations, the write-by-write retry) each statement is
    # answered at once, as before.

    def begin(self) -> None:
        assert self.conn is not None
        self.conn.execute("BEGIN")

    def commit(self) -> None:
        """COMMIT; in a pipeline its answer (the acknowledgement) comes at the pipeline's
        end, which raises if it failed."""
        assert self.conn is not None
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        conn = self.conn
        if conn is not None and not conn.closed and not conn.broken:
            try:
                conn.rollback()
            except psycopg.Error:
                log.exception("state database %s: rollback failed", self.name)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        assert self.conn is not None
        self.conn.execute(_sql(sql), params)

    def executemany(self, sql: str, params: list[Sequence[Any]]) -> None:
        assert self.conn is not None
        with self.conn.cursor() as cursor:
            cursor.executemany(_sql(sql), params)

    # --- reading --------------------------------------------------------------

    def _reader(self) -> psycopg.Connection:
        with self._idle_lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.broken and not conn.closed:
                    return conn
        return self._connect(autocommit=False)

    def _put_back(self, conn: psycopg.Connection) -> None:
        try:
            conn.rollback()  # ends the read's snapshot
        except psycopg.Error:
            conn.close()
            return
        with self._idle_lock:
            if len(self._idle) < READ_POOL and self.conn is not None:
                self._idle.append(conn)
                return
        conn.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        conn = self._reader()
        try:
            with conn.cursor(row_factory=_row_factory) as cursor:
                return cursor.execute(_sql(sql), params).fetchall()
        except psycopg.Error as e:
            raise StoreError(f"state database {self.name}: read failed: "
                             f"{redact(str(e)).strip()}") from e
        finally:
            self._put_back(conn)

    @staticmethod
    def preloaded(sql: str) -> None:
        """No reader process: the server sends the rows (store_preload.py is SQLite's)."""
        return None

    def rows(self, sql: str, params: Sequence[Any], chunk: int) -> Iterator[tuple[Any, ...]]:
        conn = self._reader()
        try:
            with conn.cursor(name="wfm_rows") as cursor:
                cursor.itersize = chunk
                cursor.execute(_sql(sql), params)
                while batch := cursor.fetchmany(chunk):
                    yield from batch
        except psycopg.Error as e:
            raise StoreError(f"state database {self.name}: read failed: "
                             f"{redact(str(e)).strip()}") from e
        finally:
            self._put_back(conn)

    @staticmethod
    def verified() -> None:
        """Nothing to wait for: the server checks its pages as it reads them (and its
        data checksums, where initdb enabled them)."""

    def close(self) -> None:
        with self._idle_lock:
            idle, self._idle = self._idle, []
        if self._lock_conn is not None:
            # Released now: a closed connection's server process ends (and lets go of the
            # lock) a moment after close returns, and a store opened on the database at
            # once was refused ("in use by another orchestrator", holder unknown).
            with contextlib.suppress(psycopg.Error):  # gone: so is its lock
                self._lock_conn.execute("SELECT pg_advisory_unlock_all()")
        for conn in (*idle, self.conn, self._lock_conn):
            if conn is not None:
                conn.close()
        self.conn = self._lock_conn = None
