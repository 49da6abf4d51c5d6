"""kill -9 at random moments while clients reserve, bind and delete (a real server process).

Each cycle starts ``wfm-orchestrator serve`` (Resource Manager only, auth =
none, a free loopback port, a temporary state database), lets concurrent
clients reserve (POST ephemeralservice/reserve), bind (GET
server/allocation) and delete (DELETE server/allocation) while a killer
waits a random moment and sends SIGKILL. The clients keep a history: a
request answered is *acknowledged*; one cut off by the kill is *uncertain*
(it may or may not have been applied). After each restart, before any new
traffic, the committed state must agree with the history:

* every acknowledged reservation is present exactly once, in a state its
  answers allow (FREE stays held, a bound one stays ALLOCATED), unless its
  DELETE was acknowledged (then it is RELEASED);
* nothing is half-present: a held reservation has the whole placement its
  request asks for, a queued one none; uncertain requests may or may not
  have happened, but only whole;
* no datanode is over-committed (sum of placements <= capacity, no core
  held twice), from the database and from GET server/resources/all, which
  must match the database exactly;
* with ``queue_policy = fifo`` the queued reservations are the newest of
  the live ones (nothing was admitted past a queued one);
* ``PRAGMA integrity_check`` is ok.

Then the uncertain requests are retried, as a client would after a
timeout: a reserve retried with the same body answers 200 and exists
once; a DELETE retried answers 200 or 502.

Scale: ``WFM_RELIABILITY_KILLS`` (default 20, CI); 200 on demand.
"""

# ruff: noqa: S311 - random test workloads and timings, not cryptography

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

import pytest

from .harness import (
    SMALL_CAPACITY,
    Http,
    Orchestrator,
    Transport,
    env_int,
    figures,
    free_port,
    gbf,
    integrity,
    overcommits,
    placement_problems,
    read_rows,
    resources_problems,
    small_config,
)

# Real server processes, no Slurm: runs without the mini-cluster.
pytestmark = [pytest.mark.reliability, pytest.mark.server]

KILLS = env_int("WFM_RELIABILITY_KILLS", 20)
CLIENTS = 4
HOLD = 4  # a client deletes once it holds this many reservations
RESERVE = "/v1.0.0/ephemeralservice/reserve"
ALLOC = "/v2.0.0/server/allocation/"
# Request shapes (cores, MB of memory, MB of storage, servers) on 4 x (8 cores, 16 GB, 1 TB):
# the pool holds some of them at once, the rest queue.
SHAPES = [(1, 1024, 0, 1), (2, 4096, 10240, 1), (4, 8192, 0, 1), (3, 2048, 51200, 2),
          (8, 16384, 0, 1)]


@dataclass
class Hist:
    """What the clients know of one reservation."""

    body: dict
    owner: int
    reserve: str = ""  # "" unsent, "uncertain", or the acknowledged status (FREE/QUEUED)
    bound: str = ""  # "", "uncertain", "acked" (GET allocation 200)
    delete: str = ""  # "", "uncertain", "acked" (200 or 502: gone either way)


class Run:
    def __init__(self, port: int):
        self.port = port
        self.hist: dict[str, Hist] = {}
        self.lock = threading.Lock()
        self.acked = 0
        self.uncertain = 0
        self.in_flight = 0
        self.kills_in_flight = 0
        self.statuses: dict[str, int] = {}
        self.unexpected: list[str] = []
        self.counter = 0

    def new_name(self, owner: int) -> str:
        with self.lock:
            self.counter += 1
            return f"k{owner}_{self.counter}"

    def owned(self, owner: int) -> tuple[list[str], list[str]]:
        """(held by acknowledged reserve, not deleted; of those, FREE and unbound)."""
        with self.lock:
            live = [n for n, h in self.hist.items() if h.owner == owner
                    and h.reserve in ("FREE", "QUEUED") and not h.delete]
            unbound = [n for n in live if self.hist[n].reserve == "FREE"
                       and not self.hist[n].bound]
        return live, unbound

    def call(self, http: Http, method: str, path: str, body=None) -> tuple[int, object] | None:
        with self.lock:
            self.in_flight += 1
        try:
            status, answer = http.request(method, path, body)
        except Transport:
            with self.lock:
                self.uncertain += 1
            return None
        finally:
            with self.lock:
                self.in_flight -= 1
        with self.lock:
            self.acked += 1
            key = f"{method} {path.split('/')[2]}/{path.split('/')[3]} {status}"
            self.statuses[key] = self.statuses.get(key, 0) + 1
        return status, answer

    def client(self, owner: int, rng: random.Random, stop: threading.Event) -> None:
        http = Http(self.port, timeout=10)
        try:
            while not stop.is_set():
                live, unbound = self.owned(owner)
                roll = rng.random()
                if len(live) >= HOLD or (live and roll < 0.3):
                    name = rng.choice(live)
                    self.hist[name].delete = "uncertain"
                    got = self.call(http, "DELETE", ALLOC + name)
                    if got is None:
                        return
                    status, answer = got
                    if status != 200:
                        self.unexpected.append(f"DELETE {name} (acknowledged): {status} {answer}")
                    self.hist[name].delete = "acked"
                elif unbound and roll < 0.5:
                    name = rng.choice(unbound)
                    self.hist[name].bound = "uncertain"
                    got = self.call(http, "GET", ALLOC + name)
                    if got is None:
                        return
                    status, answer = got
                    if status != 200:
                        self.unexpected.append(f"GET allocation {name} (FREE): {status} {answer}")
                    self.hist[name].bound = "acked"
                else:
                    name = self.new_name(owner)
                    cores, msize, ssize, servers = rng.choice(SHAPES)
                    h = Hist(gbf(name, cores, msize, ssize, servers), owner, reserve="uncertain")
                    with self.lock:
                        self.hist[name] = h
                    got = self.call(http, "POST", RESERVE, h.body)
                    if got is None:
                        return
                    status, answer = got
                    if status != 200 or answer.get("status") not in ("FREE", "QUEUED"):
                        self.unexpected.append(f"reserve {name}: {status} {answer}")
                        h.reserve = "failed"
                    else:
                        h.reserve = answer["status"]
        finally:
            http.close()

    # --- after a restart ---------------------------------------------------------

    def check(self, db: str, http: Http, cycle: int) -> list[str]:
        rows = read_rows(db)
        problems = []
        for name, h in self.hist.items():
            row = rows.get(name)
            state = row.state if row else None
            where = f"cycle {cycle}: {name} ({h.reserve} reserve, {h.bound or 'no'} bind, " \
                    f"{h.delete or 'no'} delete)"
            if h.delete == "acked":
                if state != "RELEASED":
                    problems.append(f"{where}: DELETE acknowledged, but the row is {state}")
            elif h.reserve in ("FREE", "QUEUED"):
                allowed = {"FREE", "ALLOCATED", "QUEUED"} if h.reserve == "QUEUED" \
                    else {"FREE", "ALLOCATED"}
                if h.bound == "acked":
                    allowed = {"ALLOCATED"}
                if h.delete == "uncertain":
                    allowed = allowed | {"RELEASED"}
                if state not in allowed:
                    problems.append(f"{where}: acknowledged, expected {sorted(allowed)}, "
                                    f"found {state or 'nothing'}")
        phantoms = sorted(set(rows) - set(self.hist))
        if phantoms:
            problems.append(f"cycle {cycle}: rows nobody asked for: {phantoms[:5]}")
        problems += [f"cycle {cycle}: {p}" for p in placement_problems(rows)]
        problems += [f"cycle {cycle}: over-commit: {p}" for p in overcommits(rows, SMALL_CAPACITY)]
        status, answer = http.request("GET", "/v1.0.0/server/resources/all")
        assert status == 200, answer
        problems += [f"cycle {cycle}: {p}" for p in resources_problems(answer, rows,
                                                                       SMALL_CAPACITY)]
        live = sorted((r for r in rows.values() if r.state in ("QUEUED", "FREE", "ALLOCATED")),
                      key=lambda r: r.seq)
        first_queued = next((i for i, r in enumerate(live) if r.state == "QUEUED"), len(live))
        passed = [r.name for r in live[first_queued:] if r.state != "QUEUED"]
        if passed:
            problems.append(f"cycle {cycle}: admitted past the queue head "
                            f"{live[first_queued].name}: {passed}")
        status, answer = http.request("GET", "/v1.0.0/ephemeralservice/status")
        assert status == 200, answer
        listed = [s["name"] for s in answer]
        if len(listed) != len(set(listed)) or set(listed) != set(rows):
            problems.append(f"cycle {cycle}: the status list ({len(listed)} entries) does not "
                            f"list each of the {len(rows)} reservations once")
        check = integrity(db)
        if check != "ok":
            problems.append(f"cycle {cycle}: PRAGMA integrity_check: {check}")
        return problems

    def retry_uncertain(self, http: Http) -> None:
        """What a client does after a timeout: send the same request again."""
        for name, h in list(self.hist.items()):
            if h.reserve == "uncertain":
                status, answer = http.request("POST", RESERVE, h.body)
                assert status == 200 and answer["status"] in ("FREE", "QUEUED"), (
                    f"retried reserve of {name}: {status} {answer}")
                h.reserve = answer["status"]
            if h.delete == "uncertain":
                status, answer = http.request("DELETE", ALLOC + name)
                assert status in (200, 502), f"retried DELETE of {name}: {status} {answer}"
                h.delete = "acked"
            elif h.bound == "uncertain" and not h.delete:
                status, answer = http.request("GET", ALLOC + name)
                assert status in (200, 501), f"retried GET allocation {name}: {status} {answer}"
                h.bound = "acked"


def test_kill9_at_random_moments_loses_nothing_acknowledged(tmp_path, state_db):
    """After every kill -9 and restart: acknowledged writes there, nothing half, no over-commit
    (SQLite, and PostgreSQL on the local HA cluster)."""
    port = free_port()
    config = small_config(str(tmp_path), port, state_db=state_db)
    db = state_db
    server = Orchestrator(config, port, str(tmp_path / "server.log"))
    run = Run(port)
    rng = random.Random(int(time.time()))
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    started = time.monotonic()
    survived = 0
    problems: list[str] = []
    try:
        for cycle in range(1, KILLS + 1):
            server.start()
            admin = Http(port)
            problems += run.check(db, admin, cycle)
            assert not problems, f"seed {seed}:\n" + "\n".join(problems[:20])
            run.retry_uncertain(admin)
            admin.close()
            stop = threading.Event()
            threads = [threading.Thread(target=run.client,
                                        args=(i, random.Random(rng.random()), stop))
                       for i in range(CLIENTS)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.02, 0.6))  # the random moment (not a wait for state)
            with run.lock:
                if run.in_flight:
                    run.kills_in_flight += 1
            assert server.kill() == -9
            stop.set()
            for t in threads:
                t.join(30)
                assert not t.is_alive(), "a client did not notice the kill within 30 s"
            survived += 1
        server.start()
        admin = Http(port)
        problems += run.check(db, admin, KILLS + 1)
        admin.close()
    finally:
        server.stop()
    elapsed = time.monotonic() - started
    rows = read_rows(db)
    figures("kill -9", kills_survived=survived, kills_with_requests_in_flight=run.kills_in_flight,
            requests_acknowledged=run.acked, requests_cut_by_a_kill=run.uncertain,
            reservations=len(rows), overcommits_found=sum("over-commit" in p for p in problems),
            problems=len(problems), seconds=f"{elapsed:.0f}", seed=seed)
    print("[reliability] kill -9: answers " + ", ".join(
        f"{k}: {v}" for k, v in sorted(run.statuses.items())), flush=True)
    assert not run.unexpected, f"seed {seed}:\n" + "\n".join(run.unexpected[:20])
    assert not problems, f"seed {seed}:\n" + "\n".join(problems[:20])
    assert survived == KILLS
    assert run.kills_in_flight >= KILLS // 2, (
        f"only {run.kills_in_flight} of {KILLS} kills hit requests in flight")
