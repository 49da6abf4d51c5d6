"""The administrator's command line, below its edge (cli.py): the running service's API,
the state database while the service is stopped, and the tables a terminal shows.

* ``Api`` is the one place that does HTTP: it finds the service from ``listen`` and sends
  the admin token (``WFM_ADMIN_TOKEN``, or the file of ``--token-file`` /
  ``WFM_ADMIN_TOKEN_FILE``; none with ``auth = none``).
* ``release_offline``, ``check_database`` and ``backup_database`` open the state database
  under the store's lock (store.py), so they refuse to run beside a running service,
  except the read-only check and the online backup, which SQLite makes safe. With a
  PostgreSQL ``state_db`` the check connects and reads (schema version, counts; the
  server keeps its own checksums) and the backup is refused: pg_dump and the cluster's
  own backups are the tools there (docs/ha.md).
* The ``render_*`` functions are pure: a document in, lines of text out.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from . import state_db, state_files
from .config import Config
from .errors import ApiFailed, ServiceUnreachable, StoreError, WfmError

# The API version prefix the commands use for the specification's endpoints.
V = "/v1.0.0"
TIMEOUT = 30.0  # seconds: a release waits for its commit, never for Slurm
PAGE = 10_000  # items a list command asks for at once (the API's largest limit)


# --- talking to the running service -------------------------------------------------


def service_url(listen: str) -> str:
    """The URL a local command reaches the service at (a wildcard address -> loopback)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "*"):  # noqa: S104 - the address it listens on, not ours
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def read_token(token_file: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The admin token: ``WFM_ADMIN_TOKEN``, else the first line of ``token_file``."""
    env = os.environ if environ is None else environ
    if env.get("WFM_ADMIN_TOKEN"):
        return env["WFM_ADMIN_TOKEN"].strip()
    if token_file:
        with open(token_file, encoding="utf-8") as fh:
            return fh.readline().strip() or None
    return None


class Api:
    """Requests to the running orchestrator; JSON in and out.

    Several base URLs (orchestrators on more than one admin node, docs/ha.md) are asked in
    order: one that cannot be reached, or that answers 503 (a standby) while another is
    configured, passes the request on; rounds a second apart go on for ``retry_for``
    seconds (longer than a failover). Its leader URL in a 503 is not followed: only the
    configured orchestrators get the admin token.
    """

    def __init__(self, base_url: str | Sequence[str], token: str | None = None,
                 timeout: float = TIMEOUT, retry_for: float = 0.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.base_urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not self.base_urls:
            raise ValueError("no orchestrator URL")
        self.token = token
        self.timeout = timeout
        self.retry_for = retry_for
        self._clock = clock
        self._sleep = sleep

    @property
    def base_url(self) -> str:
        return self.base_urls[0]

    @classmethod
    def for_config(cls, config: Config, token: str | None) -> Api:
        return cls(service_url(config.listen), token)

    def call(self, method: str, path: str, body: Any = None,
             params: dict[str, str] | None = None) -> Any:
        return self._exchange(method, path, body, params)[0]

    def every(self, path: str, params: dict[str, str] | None = None) -> list[Any]:
        """Every item of a list, PAGE at a time (the API's X-Next-Cursor): no answer holds
        more than a page, however long the list."""
        items: list[Any] = []
        query = {**(params or {}), "limit": str(PAGE)}
        while True:
            page, headers = self._exchange("GET", path, None, query)
            items += page
            after = headers.get("X-Next-Cursor")
            if after is None:
                return items
            query["after"] = after

    def _exchange(self, method: str, path: str, body: Any,
                  params: dict[str, str] | None) -> tuple[Any, Mapping[str, str]]:
        """(the JSON answer, its headers), from the first orchestrator that answers."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        target = urllib.parse.quote(path) + (
            "?" + urllib.parse.urlencode(query) if query else "")
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        deadline = self._clock() + self.retry_for
        while True:
            for base in self.base_urls:
                try:
                    return self._once(base, target, method, data, headers)
                except ServiceUnreachable as e:
                    last: WfmError = e
                except ApiFailed as e:
                    if e.status != 503 or len(self.base_urls) == 1:
                        raise
                    last = e
            if self._clock() >= deadline:
                raise last
            self._sleep(1.0)

    def _once(self, base: str, target: str, method: str, data: bytes | None,
              headers: dict[str, str]) -> tuple[Any, Mapping[str, str]]:
        request = urllib.request.Request(base + target, data=data, method=method,  # noqa: S310 - http
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:  # noqa: S310
                raw = resp.read()
                answer_headers = resp.headers
        except urllib.error.HTTPError as e:
            raise _failure(e.code, e.read()) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ServiceUnreachable(base, str(reason)) from None
        return (json.loads(raw) if raw else None), answer_headers


def _failure(status: int, raw: bytes) -> ApiFailed:
    try:
        body = json.loads(raw)
        return ApiFailed(status, str(body.get("title", "")), str(body.get("description", "")))
    except (ValueError, AttributeError):
        return ApiFailed(status, "", raw[:200].decode(errors="replace"))


def leadership(api: Api) -> tuple[bool, str]:
    """(whether the orchestrator ``api`` asks first leads, what it said): its ``GET
    /v1.0.0/leader``. A virtual IP's health check (docs/ha.md) asks its own node's
    instance alone: another instance's answer says nothing about this one."""
    doc = api.call("GET", f"{V}/leader")  # api/leadership.py's ROLE_PATH
    if not isinstance(doc, dict):
        return False, f"{api.base_url}: not a role document: {str(doc)[:80]}"
    role, leader, epoch = doc.get("role"), doc.get("leader"), doc.get("epoch")
    if role == "leader":
        return True, f"{api.base_url} leads" + (f" (epoch {epoch})" if epoch is not None else "")
    return False, f"{api.base_url} is {role}: the leader is {leader or 'nobody right now'}"


def release(api: Api, name: str) -> dict[str, Any]:
    """Release ``name`` as the Session Manager would (its Slurm job is stopped first); a
    service without Slurm (slurmrestd_url empty) frees the reservation directly."""
    try:
        return api.call("DELETE", f"{V}/ephemeralservice/release/{name}")
    except ApiFailed as e:
        if e.title != "No Slurm configured":
            raise
    return api.call("DELETE", f"{V}/server/allocation/{name}")


# --- the state database, service stopped ----------------------------------------------


def release_offline(config: Config, name: str, now: float | None = None) -> str:
    """Mark ``name`` RELEASED in the stopped service's database; what was done.

    Its service job, if any, is marked as asked to stop: the service cancels it at its
    next start (services.py follows released services' jobs). Works when the reservation
    no longer fits the configured datanodes, which is when an administrator needs it.
    """
    from .store import Store

    now = time.time() if now is None else now
    lease = _offline_lease(config)
    try:
        # SQLite: the flock refuses while the service runs. PostgreSQL: the leader lease,
        # taken like an orchestrator takes it, fences the write.
        store = Store(config.state_db, lease=lease)
    except BaseException:
        if lease is not None:
            lease.release()
            lease.close()
        raise
    try:
        rows = store.query("SELECT state, seq FROM reservation WHERE name = ?", (name,))
        if not rows or rows[0]["state"] == "RELEASED":
            raise KeyError(name)
        state, seq = rows[0]["state"], rows[0]["seq"]
        store.write([
            ("UPDATE reservation SET state = 'RELEASED', token = NULL, updated = ?,"
             " detail = CASE WHEN detail = '' THEN ? ELSE detail || '; ' || ? END"
             " WHERE name = ?", (now, _OFFLINE, _OFFLINE, name)),
            ("UPDATE service_job SET release_requested = COALESCE(release_requested, ?),"
             " updated = ? WHERE name = ? AND seq = ?", (now, now, name, seq)),
        ]).wait()
        jobs = store.query("SELECT job_id, state FROM service_job WHERE name = ? AND seq = ?"
                           " AND job_id IS NOT NULL", (name, seq))
    finally:
        store.close()
        if lease is not None:
            lease.release()
            lease.close()
    said = f"reservation {name} released (was {state})"
    if jobs and jobs[0]["state"] not in _ENDED:
        said += (f"; its Slurm job {jobs[0]['job_id']} is cancelled when the service "
                 "starts")
    return said


def _leader_of(config: Config):
    """The unexpired leader lease of a PostgreSQL state_db (lease.Leader), else None."""
    from .lease import Lease

    lease = Lease(config.state_db, "", config.lease_ttl)
    try:
        leader = lease.leader()
    except StoreError:
        return None  # no lease table yet: no orchestrator ever served on it
    finally:
        lease.close()
    return leader if leader is not None and not leader.expired else None


def _offline_lease(config: Config):
    """PostgreSQL: the leader lease for an offline write, or StoreError naming who leads."""
    from . import state_db

    if not state_db.is_postgresql(config.state_db):
        return None
    from .lease import Lease, default_advertise_url
    from .store import MIGRATIONS

    lease = Lease(config.state_db, config.advertise_url or default_advertise_url(config.listen),
                  config.lease_ttl, known_schema=len(MIGRATIONS))
    try:
        lease.setup()
        if lease.acquire():
            return lease
        leader = lease.leader()
    finally:
        if lease.epoch is None:
            lease.close()
    raise StoreError(f"an orchestrator leads on {state_db.redact(config.state_db)} "
                     f"({leader.url if leader else 'unknown'}): ask it (--url), or wait "
                     f"until its lease expires ({config.lease_ttl:g} s after it stopped)")


_OFFLINE = "released by the administrator while the service was stopped"
_ENDED = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
          "BOOT_FAIL", "DEADLINE", "PREEMPTED", "GONE")


def check_database(config: Config) -> tuple[list[str], list[str]]:
    """(facts, problems) about the state database: integrity, schema, and whether the
    stored reservations fit the configured datanodes (what start-up would refuse)."""
    from .resource_manager import ResourceManager
    from .store import MIGRATIONS, Store

    path = config.state_db
    postgresql = state_db.is_postgresql(path)
    shown = state_db.redact(path)
    if not postgresql and not os.path.exists(path):
        return [f"{path}: does not exist yet (created at the first start)"], []
    if postgresql:
        try:
            if not _postgresql_has_schema(path):
                return [f"{shown}: holds no orchestrator schema yet (created at the first "
                        "start)"], []
        except StoreError as e:
            return [], [f"{shown}: {e}"]
    facts: list[str] = []
    problems: list[str] = []
    try:
        if postgresql and _leader_of(config) is not None:
            raise StoreError("in use by another orchestrator: the leader lease is held")
        store = Store(path)
    except StoreError as e:
        if "in use by another orchestrator" not in str(e):
            return facts, [str(e)]
        facts.append("in use by the running service: checked read-only")
        store = None
    try:
        if postgresql:
            integrity, version, counts, steps = _read_postgresql(path)
        else:
            integrity, version, counts, steps = _read_sqlite(path)
    except StoreError as e:
        problems.append(f"{shown}: {e}")
        integrity, version, counts, steps = [], 0, {}, 0
    if integrity == ["ok"]:
        facts.append(f"integrity: ok; schema version {version} of {len(MIGRATIONS)}")
    elif integrity:
        problems.extend(f"integrity: {line}" for line in integrity)
    facts.append("reservations: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                                     or "none") + f"; steps: {steps}")
    if store is not None:
        try:
            ResourceManager(config, store)  # what start-up does with the records
            facts.append("every held reservation fits the configured datanodes")
        except StoreError as e:
            problems.append(f"{e} (wfm-orchestrator release NAME works with the service "
                            "stopped)")
        finally:
            store.close()
    return facts, problems


def _read_sqlite(path: str) -> tuple[list[str], int, dict[str, int], int]:
    """(integrity_check's lines, schema version, reservations by state, steps), read-only."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        integrity = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        counts = dict(conn.execute("SELECT state, count(*) FROM reservation GROUP BY state"
                                   ).fetchall())
        steps = conn.execute("SELECT count(*) FROM step").fetchone()[0]
    except sqlite3.DatabaseError as e:
        raise StoreError(str(e)) from e
    finally:
        conn.close()
    return integrity, version, counts, steps


def _postgresql_has_schema(dsn: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            return conn.execute("SELECT to_regclass('schema_migration')").fetchone()[0] \
                is not None
    except psycopg.Error as e:
        raise StoreError(state_db.redact(str(e)).strip()) from None


def _read_postgresql(dsn: str) -> tuple[list[str], int, dict[str, int], int]:
    """The same read from PostgreSQL, in a read-only transaction beside a running
    service; "ok" for integrity once it answers: the server checks its pages itself (the
    cluster runs with data checksums, docs/ha.md)."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            conn.read_only = True
            version = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migration"
                                   ).fetchone()[0]
            counts = dict(conn.execute("SELECT state, count(*) FROM reservation"
                                       " GROUP BY state").fetchall())
            steps = conn.execute("SELECT count(*) FROM step").fetchone()[0]
    except psycopg.Error as e:
        raise StoreError(state_db.redact(str(e)).strip()) from None
    return ["ok"], version, counts, steps


def backup_database(config: Config, target: str) -> int:
    """Copy the state database to ``target`` (a consistent snapshot, even while the
    service runs: SQLite's online backup); its size in bytes. The copy is 0600.

    Refused for a PostgreSQL ``state_db``: a copy of one orchestrator's view is not a
    backup of a replicated cluster; pg_dump (a consistent snapshot, while the service
    runs) or the cluster's own backups are (docs/ha.md)."""
    if state_db.is_postgresql(config.state_db):
        raise StoreError(
            "db backup copies an SQLite state_db; this one is PostgreSQL "
            f"({state_db.redact(config.state_db)}): back it up with pg_dump (e.g. "
            "pg_dump --format=custom --file=FILE 'postgresql://...'), or with the "
            "cluster's own backups (docs/ha.md)")
    if os.path.exists(target):
        raise FileExistsError(f"{target} exists: choose a new file")
    if not os.path.exists(config.state_db):
        raise StoreError(f"{config.state_db} does not exist: nothing to back up")
    fd = state_files.open_private(target, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    os.close(fd)
    src = sqlite3.connect(f"file:{config.state_db}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    return os.path.getsize(target)


# --- what a terminal shows ----------------------------------------------------------------


def short_mb(mb: int) -> str:
    """A size in MB, short and never more than it is: 512M, 16G, 1.5T, 1023G."""
    for unit, exp in (("P", 3), ("T", 2), ("G", 1)):
        size = 1024**exp
        if mb >= size:
            if mb % size == 0:
                return f"{mb // size}{unit}"
            tenths = mb * 10 // size
            return f"{tenths // 10}.{tenths % 10}{unit}" if tenths < 1000 else \
                f"{mb // size}{unit}"
    return f"{mb}M"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]],
          right: Iterable[str] = ()) -> list[str]:
    """Aligned columns two spaces apart; those named in ``right`` (counts, sizes) to the
    right."""
    body = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(header)]
    to_right = [h in set(right) for h in header]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w)
                         for c, w, r in zip(cells, widths, to_right, strict=True)).rstrip()

    return [line(list(header)), *(line(r) for r in body)]


def _used(free: int, total: int, size: bool = False) -> str:
    if size:
        return f"{short_mb(free)}/{short_mb(total)}"
    return f"{free}/{total}"


def datanode_rows(nodes: list[dict[str, Any]]) -> list[str]:
    return table(["DATANODE", "LOCATION", "STATE", "CORES", "MEMORY", "STORAGE", "REASON"],
                 [[n["name"], n["location"] or "-", n["state"],
                   _used(n["free_cores"], n["cores"]),
                   _used(n["free_msize"], n["msize"], True),
                   _used(n["free_ssize"], n["ssize"], True), n["reason"]] for n in nodes],
                 right=("CORES", "MEMORY", "STORAGE"))


def render_datanodes(nodes: list[dict[str, Any]]) -> list[str]:
    return [*datanode_rows(nodes), "(free/total per datanode)"]


def _wait(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def render_status(doc: dict[str, Any], version: str = "") -> list[str]:
    """One screen: datanodes, reservations by state, the queue, services and steps."""
    nodes = doc["datanodes"]
    up = sum(n["state"] == "up" for n in nodes)
    slurm = doc["slurm"]
    where = ("Slurm: " + (f"problem: {slurm['problem']}" if slurm["problem"] else "ok")
             if slurm["configured"] else "no Slurm (Resource Manager only)")
    lines = [f"wfm-orchestrator {version} at {doc['time']}; {where}".replace("  ", " "), ""]
    lines += datanode_rows(nodes)
    lines.append(f"{len(nodes)} datanodes, {up} up (free/total)")
    lines.append("")
    res = doc["reservations"]
    lines.append("reservations: " + ", ".join(f"{res.get(s, 0)} {s}" for s in
                                              ("QUEUED", "FREE", "ALLOCATED", "RELEASED")))
    queue = doc["queue"]
    lines.append(f"queue: {queue['length']} waiting"
                 + (f", the oldest for {_wait(queue['oldest_wait'])}" if queue["length"]
                    else ""))
    services = Counter(s["status"] for s in doc["services"]["items"])
    lines.append(f"services: {doc['services']['count']} live"
                 + (" (" + ", ".join(f"{n} {s}" for s, n in sorted(services.items())) + ")"
                    if services else ""))
    steps = Counter(s["status"] for s in doc["steps"]["items"])
    lines.append(f"steps: {doc['steps']['count']}"
                 + (" (" + ", ".join(f"{n} {s}" for s, n in sorted(steps.items())) + ")"
                    if steps else ""))
    return lines


def render_reservations(items: list[dict[str, Any]]) -> list[str]:
    return table(["NAME", "USER", "TYPE", "STATE", "SERVERS", "CORES", "MEMORY", "STORAGE",
                  "WHERE", "CREATED"],
                 [[r["name"], r["user"], r["type"],
                   r["state"] + (f" #{r['position']}" if r["position"] else ""),
                   r["servers"], r["cores"], short_mb(r["msize"]), short_mb(r["ssize"]),
                   ",".join(r["datanodes"]) or "-", r["created"]] for r in items],
                 right=("SERVERS", "CORES", "MEMORY", "STORAGE"))


def render_show(res: dict[str, Any], status: dict[str, Any] | None) -> list[str]:
    """``key: value`` lines of one reservation, and its service's status when known."""
    pairs = [("name", res["name"]), ("user", res["user"]), ("type", res["type"]),
             ("state", res["state"] + (f" (queue position {res['position']})"
                                       if res["position"] else "")),
             ("servers", res["servers"]),
             ("per server", f"{res['cores']} cores, memory {short_mb(res['msize'])}, "
                            f"storage {short_mb(res['ssize'])}"
                            + (f" (flavor {res['flavor']})" if res["flavor"] else "")),
             ("locations", ", ".join(res["locations"]) or "any"),
             ("datanodes", ", ".join(res["datanodes"]) or "-"),
             ("bound job", res["bound_job"] if res["bound_job"] is not None else "-"),
             ("created", res["created"]), ("updated", res["updated"]),
             ("detail", res["detail"] or "-")]
    if status is not None:
        pairs += [("service", status.get("status", "-")),
                  ("service detail", status.get("detail", "") or "-")]
    width = max(len(k) for k, _ in pairs)
    return [f"{k + ':':<{width + 1}} {v}" for k, v in pairs]


def render_steps(items: list[dict[str, Any]]) -> list[str]:
    return table(["NAME", "USER", "STATUS", "TIME", "DETAIL"],
                 [[s["name"], s["user"], s["status"], s.get("time", ""), s.get("detail", "")]
                  for s in items])
