"""The leader lease (issue #20, item 2): one orchestrator leads on a PostgreSQL state_db.

One row of the ``wfm_lease`` table says who leads: holder (a random id per process),
the URL clients should use (``advertise_url``), an epoch and an expiry, all times on
the database's clock (``clock_timestamp()``): the instances' own clocks never matter.

* Acquire: one UPDATE that succeeds only when the lease has expired, incrementing the
  epoch. Renew (every ttl/3): an UPDATE that succeeds only for our holder and epoch. No
  row: another instance took over; the caller stops the process (cli.EXIT_LEASE_LOST).
* Fencing: every write batch of the store runs ``wfm_fence(holder, epoch)`` first, inside
  its transaction: a row lock ``FOR SHARE`` on the lease when it is still ours and
  unexpired, else an error (SQLSTATE ``WFM01``) that rolls the batch back. A takeover's
  UPDATE conflicts with that lock: it waits for the batch's commit, and the new leader's
  load then sees the batch. A paused or cut-off former leader can never commit.
* Locally, ``remaining()`` is how long the lease is surely still ours: from the moment
  the last successful renewal was *sent* (monotonic clock), plus the ttl; the database's
  expiry is later than that. Slurm submissions ask for a margin first (``check``).

The table is made here, not by the store's migrations: an instance reads the lease
before it may open the store, and only the leader migrates. SQLite has no lease (one
node, its flock): nothing here is used with it.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import SlurmUnavailable, StoreError
from .state_db import redact

log = logging.getLogger(__name__)

FENCE_SQLSTATE = "WFM01"  # raised by wfm_fence (below)
CONNECT_TIMEOUT = "5"  # seconds, unless state_db gives connect_timeout

# Under a transaction-level advisory lock: two instances starting at once on an empty
# schema would otherwise race on CREATE TABLE IF NOT EXISTS (a duplicate-key error).
_SETUP = [
    "SELECT pg_advisory_xact_lock(hashtextextended('wfm-lease:' || current_schema(), 0))",
    """CREATE TABLE IF NOT EXISTS wfm_lease (
        id      INTEGER PRIMARY KEY CHECK (id = 1),
        holder  TEXT NOT NULL DEFAULT '',
        url     TEXT NOT NULL DEFAULT '',
        epoch   BIGINT NOT NULL DEFAULT 0,
        expires TIMESTAMPTZ NOT NULL DEFAULT '-infinity'
    )""",
    "INSERT INTO wfm_lease (id) VALUES (1) ON CONFLICT (id) DO NOTHING",
    # The fence: FOR SHARE makes a takeover's UPDATE wait for the batch's commit.
    """CREATE OR REPLACE FUNCTION wfm_fence(p_holder TEXT, p_epoch BIGINT) RETURNS void
        LANGUAGE plpgsql AS $fence$
    BEGIN
        PERFORM 1 FROM wfm_lease WHERE id = 1 AND holder = p_holder AND epoch = p_epoch
            AND expires > clock_timestamp() FOR SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'the leader lease (epoch %) is no longer held by this '
                'orchestrator: another one leads', p_epoch USING ERRCODE = 'WFM01';
        END IF;
    END $fence$""",
    # The schema version the store's migrations reached (0 before the first): a standby
    # older than the schema must not take over (acquire), it could not load the state.
    """CREATE OR REPLACE FUNCTION wfm_schema_version() RETURNS bigint
        LANGUAGE plpgsql STABLE AS $version$
    DECLARE
        found bigint;
    BEGIN
        IF to_regclass('schema_migration') IS NULL THEN
            RETURN 0;
        END IF;
        EXECUTE 'SELECT COALESCE(max(version), 0) FROM schema_migration' INTO found;
        RETURN found;
    END $version$""",
]

# Taking the lease. The schema's version is checked in the UPDATE, not read before it: a
# migration committed meanwhile counts.
_TAKE_EXPIRED = (
    "UPDATE wfm_lease SET holder = %s, url = %s, epoch = epoch + 1,"
    " expires = clock_timestamp() + make_interval(secs => %s)"
    " WHERE id = 1 AND expires <= clock_timestamp()"
    " AND (%s::bigint IS NULL OR wfm_schema_version() <= %s::bigint) RETURNING epoch")
_TAKE_FROM_DEAD = (
    "UPDATE wfm_lease SET holder = %s, url = %s, epoch = epoch + 1,"
    " expires = clock_timestamp() + make_interval(secs => %s)"
    " WHERE id = 1 AND holder = %s AND epoch = %s"
    " AND (%s::bigint IS NULL OR wfm_schema_version() <= %s::bigint) RETURNING epoch")


class LeaseLost(StoreError):
    """This orchestrator no longer holds the leader lease (or cannot know that it does)."""


@dataclass(frozen=True)
class Leader:
    """The lease row as the database sees it now."""

    holder: str
    url: str
    epoch: int
    expired: bool


def default_advertise_url(listen: str) -> str:
    """``http://HOST:PORT`` of ``listen``; a wildcard address is named by this host's name."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - naming it, not binding it
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class Lease:
    """The lease of one orchestrator process, on a connection of its own (autocommit)."""

    def __init__(self, dsn: str, url: str, ttl: float,
                 clock: Callable[[], float] = time.monotonic,
                 known_schema: int | None = None) -> None:
        """``known_schema``: the newest schema version this orchestrator can load; a lease
        is not taken while the database's schema is newer (None: not checked)."""
        from psycopg import conninfo

        params = conninfo.conninfo_to_dict(dsn)
        params.setdefault("connect_timeout", CONNECT_TIMEOUT)
        params["application_name"] = "wfm-orchestrator-lease"
        # A renewal must fail, not hang, when the server stops answering (a cut network):
        # the keeper then stops the leader once the lease ran out. tcp_user_timeout
        # covers a request the server never acknowledged, the keepalives one it received
        # before the network went (its answer never comes): store_postgresql.DEAD_SERVER.
        params.setdefault("tcp_user_timeout", str(int(ttl * 1000 / 3)))
        params.setdefault("keepalives", "1")
        params.setdefault("keepalives_idle", "1")
        params.setdefault("keepalives_interval", "1")
        params.setdefault("keepalives_count", str(max(1, int(ttl / 3) - 1)))
        self._conninfo = conninfo.make_conninfo(**params)
        self.name = redact(dsn)
        self.url = url
        self.ttl = float(ttl)
        self.holder = f"{node_name()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.epoch: int | None = None
        self._clock = clock
        self._until = 0.0  # monotonic: the lease is surely ours until then
        self._conn: Any = None
        self._lock = threading.Lock()  # one statement at a time on the connection
        self.known_schema = known_schema
        self._newer_schema_said = 0  # the newer version last logged (once each)

    # --- the connection ---------------------------------------------------------

    def _execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        import psycopg

        from .store_postgresql import connect

        with self._lock:
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._conn = connect(self._conninfo, autocommit=True)
                    self._conn.execute("SELECT set_config('statement_timeout', %s, false)",
                                       (f"{int(self.ttl * 1000 / 3)}ms",))
                cursor = self._conn.execute(sql, params or None)
                return cursor.fetchall() if cursor.description else []
            except psycopg.Error as e:
                if self._conn is not None and (self._conn.broken or self._conn.closed):
                    self._conn = None
                raise StoreError(f"state database {self.name}: the leader lease: "
                                 f"{redact(str(e)).strip()}") from None

    def setup(self) -> None:
        """The lease table, its row and the fence function, made when missing."""
        import psycopg

        from .store_postgresql import connect

        with self._lock:
            try:
                with connect(self._conninfo) as conn:  # one transaction
                    for sql in _SETUP:
                        conn.execute(sql)
            except psycopg.Error as e:
                raise StoreError(f"state database {self.name}: cannot set up the leader "
                                 f"lease: {redact(str(e)).strip()}") from None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- leading ------------------------------------------------------------------

    def acquire(self) -> bool:
        """Take the lease if it has expired, or if its holder is a process of this host
        that no longer runs (a restart after a crash need not wait for the ttl): a new
        epoch. True when it is ours now."""
        sent = self._clock()
        known = (self.known_schema, self.known_schema)
        rows = self._execute(_TAKE_EXPIRED, (self.holder, self.url, self.ttl, *known))
        if not rows:
            leader = self.leader()
            if leader is None:
                return False
            if leader.expired and self._schema_is_newer():
                return False
            if not _dead_here(leader.holder):
                return False
            # Only if that dead holder still has it: another standby may take it meanwhile.
            rows = self._execute(_TAKE_FROM_DEAD, (self.holder, self.url, self.ttl,
                                                   leader.holder, leader.epoch, *known))
            if not rows:
                self._schema_is_newer()
                return False
            log.warning("leader lease: its holder %s (epoch %d) was a process of this host "
                        "that no longer runs: taken without waiting for its expiry",
                        leader.holder, leader.epoch)
        self.epoch = rows[0][0]
        self._until = sent + self.ttl
        log.info("leader lease taken: epoch %d, ttl %g s, clients are sent to %s",
                 self.epoch, self.ttl, self.url)
        return True

    def _schema_is_newer(self) -> bool:
        """The database's schema is newer than this orchestrator can load (said once per
        version, as an error: this instance will never lead until it is upgraded)."""
        if self.known_schema is None:
            return False
        version = self._execute("SELECT wfm_schema_version()")[0][0]
        if version <= self.known_schema:
            return False
        if version != self._newer_schema_said:
            self._newer_schema_said = version
            log.error("leader lease: not taken: the state database's schema is version %d, "
                      "newer than this orchestrator knows (%d); it stays a standby until "
                      "it is upgraded (docs/ha.md, upgrading one node at a time)",
                      version, self.known_schema)
        return True

    def renew(self) -> bool:
        """Extend our lease; False when it is no longer ours (another instance took it).

        Raises StoreError when the database cannot be asked: the caller retries until
        ``remaining()`` is spent."""
        if self.epoch is None:
            return False
        sent = self._clock()
        rows = self._execute(
            "UPDATE wfm_lease SET expires = clock_timestamp() + make_interval(secs => %s)"
            " WHERE id = 1 AND holder = %s AND epoch = %s RETURNING epoch",
            (self.ttl, self.holder, self.epoch))
        if not rows:
            return False
        self._until = sent + self.ttl
        return True

    def release(self) -> None:
        """A clean stop: the lease expires now, so that a standby takes over at once."""
        if self.epoch is None:
            return
        try:
            self._execute("UPDATE wfm_lease SET expires = clock_timestamp()"
                          " WHERE id = 1 AND holder = %s AND epoch = %s",
                          (self.holder, self.epoch))
        except StoreError as e:
            log.warning("leader lease not released (it expires after its ttl): %s", e)
        self.epoch = None
        self._until = 0.0

    def drop(self) -> None:
        """Lost: act no more as the leader (``check`` refuses from now on)."""
        self.epoch = None
        self._until = 0.0

    def remaining(self) -> float:
        """Seconds the lease is surely still ours (0 when not leading)."""
        return max(0.0, self._until - self._clock()) if self.epoch is not None else 0.0

    def check(self, margin: float) -> None:
        """Raise LeaseLost unless the lease is surely ours for ``margin`` more seconds."""
        if self.remaining() < margin:
            raise LeaseLost(f"the leader lease is not surely held for {margin:g} more "
                            "seconds: not acting (another orchestrator may lead)")

    @property
    def fencing(self) -> tuple[str, int]:
        """(holder, epoch) for the store's fence."""
        assert self.epoch is not None
        return self.holder, self.epoch

    def leader(self) -> Leader | None:
        """The lease row now (None before any instance set it up)."""
        rows = self._execute(
            "SELECT holder, url, epoch, expires <= clock_timestamp() FROM wfm_lease WHERE id = 1")
        if not rows:
            return None
        holder, url, epoch, expired = rows[0]
        return Leader(holder, url, epoch, expired)


def node_name() -> str:
    """This instance's node in the lease's holder: $WFM_NODE_NAME, else the host's name
    (deploy/hacluster names its two instances as two nodes of one machine)."""
    return os.environ.get("WFM_NODE_NAME") or socket.gethostname()


def _dead_here(holder: str) -> bool:
    """Is ``holder`` (host:pid:random) a process of this host that no longer runs? A pid
    running something else than an orchestrator (reused) counts as gone."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != node_name() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read()
    except FileNotFoundError:
        return True
    except OSError:
        return False  # cannot tell: wait for the expiry
    return b"wfm" not in argv  # a zombie has an empty command line


def submission_guard(lease: Lease, barrier: Callable[[], None]) -> Callable[[], None]:
    """What runs before each Slurm submission of a leader (``SlurmClient.before_submit``).

    ``barrier`` commits an empty write (``store.write([]).wait()``): commits keep the
    order of the writes, so every write queued before it, the job's record with its tag
    among them, is durable, and the barrier's batch was fenced: the lease was ours at
    that commit. Then the lease must surely stay ours for a third of its ttl, the time
    the submission has to reach slurmrestd. Refused: ``SlurmUnavailable`` (nothing is
    recorded, the follower tries again at its next cycle, as after a Slurm outage).
    """

    def before_submit() -> None:
        try:
            barrier()
            lease.check(lease.ttl / 3)
        except StoreError as e:
            raise SlurmUnavailable(f"not submitted: the job's record is not surely durable "
                                   f"under this orchestrator's lease ({e})") from None

    return before_submit


class Keeper:
    """Renews the lease every ttl/3 on a thread of its own; ``on_lost(reason)`` once when
    the lease is taken by another instance, or cannot be renewed before it runs out."""

    def __init__(self, lease: Lease, on_lost: Callable[[str], None]) -> None:
        self.lease = lease
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.lease.ttl)

    def _run(self) -> None:
        lease = self.lease
        while not self._stop.wait(lease.ttl / 3):
            try:
                if lease.renew():
                    continue
                reason = "another orchestrator took the leader lease"
            except StoreError as e:
                if lease.remaining() > 0:
                    log.warning("leader lease not renewed, retrying (%.1f s left): %s",
                                lease.remaining(), e)
                    continue
                reason = f"the leader lease ran out before it could be renewed ({e})"
            if not self._stop.is_set():
                self._on_lost(reason)
            return
