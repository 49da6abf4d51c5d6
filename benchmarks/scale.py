"""Scale (issue #21): the orchestrator with 100,000 live reservations, measured from outside.

    PYTHONPATH=src python3 benchmarks/scale.py latency [--datanodes 2000] [--fetchers 3]
    PYTHONPATH=src python3 benchmarks/scale.py page [--datanodes 2000]
    PYTHONPATH=src python3 benchmarks/scale.py memory|restart ...   (benchmarks/scale_state.py)

Each run starts a real `wfm-orchestrator serve` (benchmarks/api.py's start_server: Resource
Manager only, auth = none, loopback, a free port, a temporary configuration and state
database, `cpus = auto`: pinned to one CPU, the idlest over a second, as the machine is
shared; `--server-cpu` to choose) with the service environment's
interpreter (deploy/install's /opt/wfm-orchestrator: Debian's python3) running this tree's
code (PYTHONPATH), fills it through the API (`--reservations` durable reserves, pipelined
on 64 connections; every 100th for a second user), then measures from this process, on
the other CPU:

latency  GET status/{name} (random names; 4 connections, one request at a time each)
         alone, then while `--fetchers` clients (curl, niced) fetch the whole, unpaged
         status list again and again.          goal: p99 <= 15 ms while they fetch
page     pages of 1,000: the first and a middle page of the status list, a user's
         (status/{user}, status?uid=, admin/reservations?user=), server/resources/all
         ?limit=1000; and the whole lists once, for scale.   goal: a page <= 10 ms

Figures are printed with their ratio to the goal (<= 1.0 meets it); record them in
benchmarks/README.md ("Scale (issue #21)").
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import pwd
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from api import SERVICE_PYTHON, start_server, stop_server
from bench_user import ordinary_user

HERE = os.path.dirname(os.path.abspath(__file__))
TREE_SRC = os.path.join(os.path.dirname(HERE), "src")

CONF = """listen = 127.0.0.1:{port}
auth = none
state_db = {db}
cpus = {cpus}
slurmrestd_url =
Location=loc1 ComputeNodes=cn1 Datanodes=dn[1-DATANODES]
Datanode=dn[1-DATANODES] Cores=64 MemorySize=256GB StorageSize=8TB
Flavor=small MemorySize=1GB Cores=1
"""
STATUS = "/v1.0.0/ephemeralservice/status"
GOAL_P99_MS = 15.0
GOAL_PAGE_MS = 10.0
CONNECTIONS = 64  # for the fill: one answer per connection per group commit
PIPELINE = 64  # requests sent at once on a fill connection


def idlest(cpus: set[int], seconds: float = 1.0) -> int:
    """The CPU of ``cpus`` busiest least over ``seconds`` (/proc/stat): the machine is
    shared, and another process pinned to the server's CPU would be measured with it."""
    def busy() -> dict[int, tuple[int, int]]:
        out = {}
        with open("/proc/stat") as fh:
            for line in fh:
                name, *fields = line.split()
                if name.startswith("cpu") and name[3:].isdigit():
                    ticks = [int(f) for f in fields]
                    out[int(name[3:])] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))
        return out
    before = busy()
    time.sleep(seconds)
    after = busy()
    return min(sorted(cpus), key=lambda c: (after[c][0] - before[c][0])
               / max(1, after[c][1] - before[c][1]))


def other_user(first: str) -> str:
    """A second ordinary account (uid >= 1000), for the per-user lists."""
    for entry in sorted(pwd.getpwall(), key=lambda p: p.pw_uid):
        if 1000 <= entry.pw_uid < 65534 and entry.pw_name != first:
            return entry.pw_name
    raise SystemExit("a second ordinary account (uid >= 1000) is needed for the per-user "
                     "lists: deploy/devcluster up creates alice and bob")


# --- the server, filled through the API -------------------------------------------------


class Filled:
    """A running server holding ``count`` live reservations: (port, names, users)."""

    def __init__(self, args: argparse.Namespace, tmp: str):
        self.user = ordinary_user()
        self.second = other_user(self.user)
        template = CONF.replace("DATANODES", str(args.datanodes))
        started = time.monotonic()
        allowed = set(os.sched_getaffinity(0))
        cpu = args.server_cpu if args.server_cpu is not None else idlest(allowed)
        # The server inherits this affinity and pins itself (cpus = auto) to that CPU; the
        # clients (this process, its threads, its curl) then move to the others.
        os.sched_setaffinity(0, {cpu})
        self.proc, self.port = start_server(tmp, "auto", args.python, template=template)
        self.server_cpus = sorted(os.sched_getaffinity(self.proc.pid))
        os.sched_setaffinity(0, allowed - {cpu} or allowed)
        self.names = [f"scale_{i}" for i in range(args.reservations)]
        self.users = [self.second if i % 100 == 99 else self.user
                      for i in range(args.reservations)]
        try:
            self._fill()
        except BaseException:
            stop_server(self.proc)
            raise
        took = time.monotonic() - started
        print(f"filled: {args.reservations} reservations ({args.datanodes} datanodes) through "
              f"the API in {took:.0f} s; {self.second} holds every 100th", flush=True)

    def _fill(self) -> None:
        work = list(range(len(self.names)))
        parts = [work[i::CONNECTIONS] for i in range(CONNECTIONS)]
        failures: list[str] = []
        threads = [threading.Thread(target=self._fill_part, args=(part, failures))
                   for part in parts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            raise SystemExit(f"the fill failed: {failures[0]}")

    def _fill_part(self, part: list[int], failures: list[str]) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=60) as sock:
                reader = sock.makefile("rb")
                for i in range(0, len(part), PIPELINE):
                    batch = part[i:i + PIPELINE]
                    sock.sendall(b"".join(self._reserve(k) for k in batch))
                    for _ in batch:
                        status, body = read_answer(reader)
                        if status != 200 or b'"FREE"' not in body:
                            raise RuntimeError(f"{status} {body[:200]!r}")
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            failures.append(repr(e))

    def _reserve(self, k: int) -> bytes:
        body = json.dumps({"name": self.names[k], "user": self.users[k],
                           "user_slurm_token": "t", "type": "GBF",
                           "attributes": {"cores": 1, "msize": 16, "gssize": 16,
                                          "mountpoint": "/m"}}).encode()
        return (b"POST /v1.0.0/ephemeralservice/reserve HTTP/1.1\r\nHost: b\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body))

    def close(self) -> None:
        stop_server(self.proc)


def read_answer(reader) -> tuple[int, bytes]:
    """One HTTP/1.1 answer from a socket file: (status, body); de-chunks."""
    status = int(reader.readline().split()[1])
    length, chunked = None, False
    while True:
        line = reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        return status, reader.read(length or 0)
    parts = []
    while True:
        size = int(reader.readline().split(b";")[0], 16)
        if not size:
            reader.readline()
            return status, b"".join(parts)
        parts.append(reader.read(size))
        reader.readline()


# --- measures ------------------------------------------------------------------------------


def timed_gets(port: int, paths: list[str], stop: threading.Event | None = None,
               count: int | None = None, pause: float = 0.0) -> list[float]:
    """Milliseconds of each GET of ``paths`` (in turn) on one keep-alive connection, one at
    a time (``pause`` s between two), until ``stop`` is set or ``count`` are done."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out: list[float] = []
    i = 0
    while (stop is None or not stop.is_set()) and (count is None or i < count):
        path = paths[i % len(paths)]
        started = time.perf_counter()
        conn.request("GET", path)
        answer = conn.getresponse()
        answer.read()
        out.append((time.perf_counter() - started) * 1000)
        if answer.status != 200:
            raise SystemExit(f"GET {path}: {answer.status}")
        i += 1
        if pause:
            time.sleep(pause)
    conn.close()
    return out


def percentiles(ms: list[float]) -> tuple[float, float, float, float]:
    ordered = sorted(ms)
    return (statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]
            if len(ordered) >= 100 else ordered[-1], ordered[-1], len(ordered))


def row(label: str, ms: list[float], goal: float | None) -> str:
    p50, p99, worst, n = percentiles(ms)
    ratio = f"{p99 / goal:6.2f}" if goal else "     -"
    return f"{label:58} {n:7d} {p50:9.2f} {p99:9.2f} {worst:9.1f} {ratio}"


HEADER = f"{'measure (ms)':58} {'n':>7} {'p50':>9} {'p99':>9} {'max':>9} {'p99/goal':>6}"


def cmd_latency(args: argparse.Namespace, filled: Filled) -> list[str]:
    port = filled.port
    rng = random.Random(21)  # noqa: S311 - which names to ask for, not a secret
    probes = [f"{STATUS}/{rng.choice(filled.names)}" for _ in range(2000)]

    def probe_for(seconds: float) -> list[float]:
        stop = threading.Event()
        results: list[list[float]] = [[] for _ in range(4)]
        threads = [threading.Thread(target=lambda k=k: results[k].extend(
            paced(port, probes[k::4], stop))) for k in range(4)]
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        return [x for r in results for x in r]

    lines = [HEADER]
    alone = probe_for(args.duration)
    lines.append(row("GET status/{name}, alone", alone, GOAL_P99_MS))
    print(lines[-1], flush=True)
    fetches: list[float] = []
    stop = threading.Event()
    url = f"http://127.0.0.1:{port}{STATUS}"
    sizes: list[int] = []

    def fetch_loop() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            done = subprocess.run(
                ["nice", "-n", "19", "curl", "-s", "-o", "/dev/null", "-w", "%{size_download}",
                 "--max-time", "120", url], capture_output=True, text=True, timeout=130)
            if done.returncode != 0:
                raise SystemExit(f"curl {url}: exit {done.returncode}")
            fetches.append((time.perf_counter() - started) * 1000)
            sizes.append(int(done.stdout))

    fetchers = [threading.Thread(target=fetch_loop) for _ in range(args.fetchers)]
    for t in fetchers:
        t.start()
    time.sleep(1.0)  # every fetcher has started its first fetch
    during = probe_for(args.duration)
    stop.set()
    for t in fetchers:
        t.join()
    lines.append(row(f"GET status/{{name}}, {args.fetchers} clients fetch the whole list",
                     during, GOAL_P99_MS))
    lines.append(row(f"  the whole status list ({max(sizes) / 1e6:.1f} MB), per fetch",
                     fetches, None))
    for line in lines[-2:]:
        print(line, flush=True)
    return lines


def paced(port: int, paths: list[str], stop: threading.Event) -> list[float]:
    """timed_gets with a 2 ms pause between requests: a client, not a load generator."""
    return timed_gets(port, paths, stop, pause=0.002)


def cmd_page(args: argparse.Namespace, filled: Filled) -> list[str]:
    port = filled.port
    uid = pwd.getpwnam(filled.second).pw_uid
    middle = None  # the cursor half-way through the list, walked to by the largest pages
    for _ in range(max(1, args.reservations // 2 // 10_000)):
        middle = next_cursor(port, f"{STATUS}?limit=10000"
                             + (f"&after={middle}" if middle else ""))
    cases = [
        ("status?limit=1000 (the first page)", f"{STATUS}?limit=1000"),
        ("status?limit=1000&after= (a middle page)", f"{STATUS}?limit=1000&after={middle}"),
        (f"status/{{user}}?limit=1000 ({filled.second}: 1% of them)",
         f"{STATUS}/{filled.second}?limit=1000"),
        ("status?uid=&limit=1000 (the plugin's bbstat, same user)",
         f"{STATUS}?uid={uid}&limit=1000"),
        ("admin/reservations?user=&limit=1000 (same user)",
         f"/admin/reservations?user={filled.second}&limit=1000"),
        ("server/resources/all?limit=1000", "/v1.0.0/server/resources/all?limit=1000"),
    ]
    lines = [HEADER]
    for label, path in cases:
        lines.append(row(label, timed_gets(port, [path], count=args.count), GOAL_PAGE_MS))
        print(lines[-1], flush=True)
    for label, path in (("the whole status list (streamed)", STATUS),
                        ("the whole server/resources/all (streamed)",
                         "/v1.0.0/server/resources/all")):
        lines.append(row(label, timed_gets(port, [path], count=5), None))
        print(lines[-1], flush=True)
    return lines


def next_cursor(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path)
    answer = conn.getresponse()
    answer.read()
    conn.close()
    return answer.headers["X-Next-Cursor"]


# --- the driver ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("memory", "restart"):
        sys.path.insert(0, HERE)
        try:
            import scale_state
        except ModuleNotFoundError as e:
            if e.name != "scale_state":
                raise
            raise SystemExit(f"{argv[0]}: benchmarks/scale_state.py is missing (it measures "
                             "memory and restart)") from None
        return scale_state.main(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("command", choices=("latency", "page", "memory", "restart"))
    p.add_argument("--datanodes", type=int, default=2000)
    p.add_argument("--reservations", type=int, default=100_000)
    p.add_argument("--fetchers", type=int, default=3,
                   help="latency: clients fetching the whole status list meanwhile")
    p.add_argument("--duration", type=float, default=10.0,
                   help="latency: seconds of probing, alone and during the fetches")
    p.add_argument("--server-cpu", type=int,
                   help="the server's CPU (default: the idlest over a second)")
    p.add_argument("--count", type=int, default=200, help="page: requests per page measured")
    p.add_argument("--python", default=SERVICE_PYTHON if os.path.exists(SERVICE_PYTHON)
                   else sys.executable,
                   help=f"the server's interpreter (default {SERVICE_PYTHON} if present)")
    args = p.parse_args(argv)
    if not shutil.which("curl"):
        raise SystemExit("curl is needed")
    # The server runs this tree's code, whatever is installed in its environment.
    os.environ["PYTHONPATH"] = os.environ.get("PYTHONPATH") or TREE_SRC
    with tempfile.TemporaryDirectory() as tmp:
        filled = Filled(args, tmp)
        try:
            lines = {"latency": cmd_latency, "page": cmd_page}[args.command](args, filled)
        finally:
            filled.close()
    print(f"\n{args.command}: {args.reservations} live reservations, {args.datanodes} "
          f"datanodes; server {args.python} on CPU {filled.server_cpus}, clients on CPU "
          f"{sorted(os.sched_getaffinity(0))}; load average {os.getloadavg()[0]:.1f} (a shared "
          "machine); ratio = p99 / goal (<= 1 meets it)")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
