"""50 concurrent clients on a pool too small for all of them (a real server process).

Every client owns its reservations (names are unique to it), so it knows
exactly which answer each of its requests must get. The mix: reserve (5
request shapes that fit, and now and then one that never fits), GET
server/allocation, DELETE server/allocation, GET status of one service,
and on purpose the error cases the spec defines (GET allocation of a
deleted reservation: 500; of a bound one: 501; DELETE of a deleted one:
502). ``DELETE ephemeralservice/release`` is not in the mix: it needs Slurm
and answers 500 "no Slurm configured" in this Resource-Manager-only run (the
mini-cluster suites release services).

Proven, during and after the run:

* 0 over-commits: every 0.1 s GET server/resources/all has each datanode's
  free cores, memory and storage within [0, capacity]; 4 times a second the
  committed placements (read from the database) hold no core twice and no
  more than each datanode's capacity;
* 0 lost or duplicated reservations: at the end the database and the
  status list hold every reservation exactly once, in the state its
  owner's answers imply; GET server/resources/all equals capacity minus
  the committed placements;
* 0 5xx except those the spec defines for the case sent (500 missing on GET
  allocation, 501 already allocated, 502 not found on DELETE, 500 never
  fits), and 0 transport errors;
* FIFO queue order (``queue_policy = fifo``): in every committed state
  sampled from the database (4 per second; a read transaction is one
  instant) the queued reservations are the newest of the live ones, by
  arrival (``seq``) -- nothing was ever admitted while an earlier one still
  waited, whatever its shape (so in particular, among requests of one
  shape, admission order is arrival order); and in the status list (oldest
  first) queue positions grow with arrival order.

Scale: ``WFM_RELIABILITY_SECONDS`` (default 15, CI) and
``WFM_RELIABILITY_CLIENTS`` (default 50); the on-demand run is 60 s.
"""

# ruff: noqa: S311 - random test workloads and timings, not cryptography

from __future__ import annotations

import random
import threading
import time
from collections import Counter

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

SECONDS = env_int("WFM_RELIABILITY_SECONDS", 15)
CLIENTS = env_int("WFM_RELIABILITY_CLIENTS", 50)
HOLD = 3
RESERVE = "/v1.0.0/ephemeralservice/reserve"
ALLOC = "/v2.0.0/server/allocation/"
STATUS = "/v1.0.0/ephemeralservice/status"
SHAPES = [(1, 1024, 0, 1), (2, 4096, 10240, 1), (4, 8192, 0, 1), (3, 2048, 51200, 2),
          (6, 12288, 0, 1)]
NEVER = (9, 1024, 0, 1)  # 9 cores: no datanode has them

# What an owner knows of its reservation.
QUEUED_OR_FREE, FREE, ALLOCATED, DELETED = "queued-or-free", "free", "allocated", "deleted"


class Run:
    def __init__(self, port: int, seconds: float):
        self.port = port
        self.deadline = time.monotonic() + seconds
        self.lock = threading.Lock()
        self.model: dict[str, str] = {}  # name -> what its owner knows
        self.requests = 0
        self.answers: Counter = Counter()
        self.bad: list[str] = []  # unexpected answers
        self.transport: list[str] = []
        self.admitted_from_queue = 0
        self.samples = 0
        self.db_samples = 0
        self.snapshots = 0
        self.max_queue = 0
        self.overcommits: list[str] = []
        self.order: list[str] = []
        self.stop = threading.Event()

    def ask(self, http: Http, method: str, path: str, body=None,
            expect: tuple[int, ...] = (200,), what: str = "") -> tuple[int, object] | None:
        try:
            status, answer = http.request(method, path, body)
        except Transport as e:
            with self.lock:
                self.transport.append(str(e))
            return None
        with self.lock:
            self.requests += 1
            self.answers[f"{what or method} {status}"] += 1
            if status not in expect:
                self.bad.append(f"{what or method} {path}: expected {expect}, got {status} "
                                f"{answer}")
        return status, answer

    def client(self, owner: int, rng: random.Random) -> None:
        http = Http(self.port, timeout=30)
        mine: list[str] = []
        gone: list[str] = []
        bound: list[str] = []
        n = 0
        try:
            while time.monotonic() < self.deadline and not self.stop.is_set():
                roll = rng.random()
                if len(mine) >= HOLD or (mine and roll < 0.25):
                    name = rng.choice(mine)
                    if self.ask(http, "DELETE", ALLOC + name, what="DELETE allocation"):
                        mine.remove(name)
                        gone.append(name)
                        self.model[name] = DELETED
                elif mine and roll < 0.45:
                    name = rng.choice(mine)
                    known = self.model[name]
                    expect = {FREE: (200,), QUEUED_OR_FREE: (200, 409),
                              ALLOCATED: (501,)}[known]
                    got = self.ask(http, "GET", ALLOC + name, expect=expect,
                                   what="GET allocation")
                    if got and got[0] == 200:
                        if known == QUEUED_OR_FREE:
                            with self.lock:
                                self.admitted_from_queue += 1
                        self.model[name] = ALLOCATED
                        bound.append(name)
                elif mine and roll < 0.55:
                    name = rng.choice(mine)
                    got = self.ask(http, "GET", f"{STATUS}/{name}", what="GET status")
                    if got and got[0] == 200 and got[1].get("status") == "STOPPED":
                        with self.lock:
                            self.bad.append(f"{name} is live for its owner, status STOPPED")
                elif gone and roll < 0.58:
                    name = rng.choice(gone)
                    self.ask(http, "GET", ALLOC + name, expect=(500,), what="GET allocation")
                    self.ask(http, "DELETE", ALLOC + name, expect=(502,),
                             what="DELETE allocation")
                elif roll < 0.60:
                    cores, msize, ssize, servers = NEVER
                    got = self.ask(http, "POST", RESERVE,
                                   gbf(f"c{owner}_never{n}", cores, msize, ssize, servers),
                                   expect=(500,), what="reserve (never fits)")
                    n += 1
                    if got and "can never fit" not in str(got[1]):
                        with self.lock:
                            self.bad.append(f"never-fit reserve: {got[1]}")
                else:
                    n += 1
                    name = f"c{owner}_{n}"
                    cores, msize, ssize, servers = rng.choice(SHAPES)
                    self.model[name] = QUEUED_OR_FREE  # before the answer: the sampler may see it
                    got = self.ask(http, "POST", RESERVE, gbf(name, cores, msize, ssize, servers),
                                   what="reserve")
                    if got is None or got[0] != 200:
                        self.model[name] = DELETED if got is None else "failed"
                        continue
                    mine.append(name)
                    if got[1]["status"] == "FREE":
                        self.model[name] = FREE
                    elif got[1]["status"] != "QUEUED":
                        with self.lock:
                            self.bad.append(f"reserve {name}: status {got[1]['status']}")
                time.sleep(rng.uniform(0, 0.01))  # a client's think time
        finally:
            http.close()

    # --- samplers ------------------------------------------------------------------

    def sample_resources(self) -> None:
        http = Http(self.port, timeout=30)
        try:
            while not self.stop.is_set():
                got = self.ask(http, "GET", "/v1.0.0/server/resources/all",
                               what="GET resources/all")
                if got and got[0] == 200:
                    with self.lock:
                        self.samples += 1
                    for entry in got[1]:
                        server, res = entry["server_name"], entry["server_resources"]
                        cores, cap_m, cap_s = SMALL_CAPACITY[server]
                        if not (0 <= res["free_cores"] <= len(cores)
                                and 0 <= res["free_msize"] <= cap_m
                                and 0 <= res["free_ssize"] <= cap_s
                                and set(res["free_core_list"]) <= cores
                                and len(res["free_core_list"]) == res["free_cores"]):
                            with self.lock:
                                self.overcommits.append(f"sampled {server}: {res}")
                self.stop.wait(0.1)
        finally:
            http.close()

    def sample_status(self) -> None:
        """The FIFO property on atomic snapshots of the status list."""
        http = Http(self.port, timeout=30)
        try:
            while not self.stop.is_set():
                got = self.ask(http, "GET", STATUS, what="GET status (all)")
                if got and got[0] == 200:
                    self.check_order(got[1])
                self.stop.wait(0.5)
        finally:
            http.close()

    def check_order(self, listed: list[dict]) -> None:
        """Queue positions grow with arrival order in the status list.

        The list is not one instant: positions are taken under the Resource
        Manager's lock, each entry's state is rendered just after, so an entry
        admitted or deleted meanwhile leaves a gap. The FIFO property itself is
        checked on the committed state (``sample_db``), which is one instant.
        """
        positions = [int(s["detail"].split("position ")[1].split(":")[0]) for s in listed
                     if s["detail"].startswith("queued at position")]
        with self.lock:
            self.snapshots += 1
            self.max_queue = max(self.max_queue, len(positions))
            if any(b <= a for a, b in zip(positions, positions[1:], strict=False)):
                self.order.append(f"queue positions in arrival order: {positions[:20]}")

    def sample_db(self, db: str) -> None:
        """Committed states (each one instant): no over-commit, nothing half, FIFO kept."""
        while not self.stop.is_set():
            rows = read_rows(db)
            problems = overcommits(rows, SMALL_CAPACITY) + placement_problems(rows)
            live = sorted((r for r in rows.values() if r.state in ("QUEUED", "FREE", "ALLOCATED")),
                          key=lambda r: r.seq)
            head = next((i for i, r in enumerate(live) if r.state == "QUEUED"), len(live))
            passed = [r.name for r in live[head:] if r.state != "QUEUED"]
            with self.lock:
                self.db_samples += 1
                self.max_queue = max(self.max_queue, len(live) - head)
                self.overcommits += [f"database: {p}" for p in problems]
                if passed:
                    self.order.append(f"admitted while {live[head].name} (earlier) waits: "
                                      f"{passed[:5]}")
            self.stop.wait(0.25)


def test_fifty_clients_never_overcommit_lose_or_reorder(tmp_path):
    """Concurrent reserve/bind/delete/status: 0 over-commits, 0 lost, 0 stray 5xx, FIFO kept."""
    port = free_port()
    server = Orchestrator(small_config(str(tmp_path), port), port, str(tmp_path / "server.log"))
    db = str(tmp_path / "state.db")
    server.start()
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    run = Run(port, SECONDS)
    started = time.monotonic()
    try:
        samplers = [threading.Thread(target=run.sample_resources),
                    threading.Thread(target=run.sample_status),
                    threading.Thread(target=run.sample_db, args=(db,))]
        clients = [threading.Thread(target=run.client, args=(i, random.Random(rng.random())))
                   for i in range(CLIENTS)]
        for t in samplers + clients:
            t.start()
        for t in clients:
            t.join(max(1.0, run.deadline - time.monotonic()) + 60)
            assert not t.is_alive(), "a client is stuck 60 s after the end of the run"
        run.stop.set()
        for t in samplers:
            t.join(60)
        elapsed = time.monotonic() - started

        # --- after the run: the committed state against the owners' knowledge ---
        http = Http(port)
        rows = read_rows(db)
        lost = []
        for name, known in run.model.items():
            state = rows[name].state if name in rows else None
            allowed = {QUEUED_OR_FREE: {"QUEUED", "FREE"}, FREE: {"FREE"},
                       ALLOCATED: {"ALLOCATED"}, DELETED: {"RELEASED", None},
                       "failed": {None}}[known]
            if state not in allowed:
                lost.append(f"{name}: its owner knows it {known}, the database has {state}")
        extra = sorted(set(rows) - set(run.model))
        status, listed = http.request("GET", STATUS)
        names = Counter(s["name"] for s in listed)
        duplicated = sorted(n for n, c in names.items() if c > 1)
        missing = sorted(set(rows) - set(names))
        status, res = http.request("GET", "/v1.0.0/server/resources/all")
        final = resources_problems(res, rows, SMALL_CAPACITY) + overcommits(rows, SMALL_CAPACITY)
        check = integrity(db)
        # Everything deleted: the pool is whole again and the queue empty.
        for name in sorted(n for n, r in rows.items() if r.state != "RELEASED"):
            assert http.request("DELETE", ALLOC + name)[0] == 200
        status, res = http.request("GET", "/v1.0.0/server/resources/all")
        not_free = [e["server_name"] for e in res
                    if e["server_resources"]["free_cores"] != e["server_resources"]["cores"]]
        http.close()
    finally:
        run.stop.set()
        server.stop()

    fivexx = sum(v for k, v in run.answers.items() if k.endswith((" 500", " 501", " 502")))
    figures("concurrency", clients=CLIENTS, seconds=f"{elapsed:.0f}", requests=run.requests,
            requests_per_second=f"{run.requests / elapsed:.0f}", reservations=len(rows),
            admitted_from_queue=run.admitted_from_queue, longest_queue=run.max_queue,
            resource_samples=run.samples, database_samples=run.db_samples,
            queue_snapshots=run.snapshots, overcommits_found=len(run.overcommits),
            lost_or_wrong=len(lost), duplicated=len(duplicated), order_violations=len(run.order),
            unexpected_answers=len(run.bad), spec_defined_5xx=fivexx, seed=seed)
    print("[reliability] concurrency: answers " + ", ".join(
        f"{k}: {v}" for k, v in sorted(run.answers.items())), flush=True)
    assert not run.transport, f"{len(run.transport)} transport errors: {run.transport[:5]}"
    assert not run.overcommits, "\n".join(run.overcommits[:20])
    assert not run.bad, f"seed {seed}: unexpected answers:\n" + "\n".join(run.bad[:20])
    assert not lost and not extra, "\n".join(lost[:20]) + f"\nrows nobody asked for: {extra[:5]}"
    assert not duplicated and not missing, (duplicated[:5], missing[:5])
    assert not final, "\n".join(final[:20])
    assert not run.order, "\n".join(run.order[:20])
    assert check == "ok", check
    assert not not_free, f"resources still held after every reservation was deleted: {not_free}"
    assert run.max_queue > 0 and run.admitted_from_queue > 0, (
        "the pool never ran short: the queue was not exercised")
    assert run.samples > SECONDS and run.snapshots > SECONDS // 2
