"""What GET /metrics costs: scraping every second under load, and one scrape's CPU.

    PYTHONPATH=src python3 benchmarks/metrics.py [--duration 6] [--rounds 3]
        [--reservations 2000] [--baseline-src DIR]

Starts `wfm-orchestrator serve` (this interpreter, the package on PYTHONPATH; cpus = auto
pins it to the first CPU) on a scratch database holding ``--reservations`` reservations
(some queued), then:

1. **Throughput A/B**: wrk (pinned to the last CPU) runs GET status/{name} for
   ``--duration`` s, alternately without and with a scraper fetching /metrics every
   second (from this process, pinned to wrk's CPU), ``--rounds`` times each; the table
   gives each round and the median difference.
2. **One scrape's CPU**: the server's own CPU time (/proc/PID/stat) over 50 scrapes of
   an otherwise idle server, per scrape: at one scrape a second, that share of one CPU
   is what scraping can take from the requests, whatever the noise of (1).
3. With ``--baseline-src DIR`` (e.g. ``git archive <commit> src | tar -x -C DIR`` and the
   compiled allocator copied in), (1)'s load alone on that tree's server too: the
   request path's cost of recording each request.

Needs wrk (apt-get install wrk). Figures: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from api import free_port, wrk  # benchmarks/api.py
from bench_user import ordinary_user

USER = ordinary_user()
CONF = """listen = 127.0.0.1:{port}
auth = none
state_db = {db}
slurmrestd_url =
Location=loc1 ComputeNodes=cn1 Datanodes=dn[1-100]
Datanode=dn[1-100] Cores=64 MemorySize=256GB StorageSize=8TB
"""
HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")


def start(tmp: str, src: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    home = tempfile.mkdtemp(dir=tmp)
    conf = os.path.join(home, "wfm.conf")
    with open(conf, "w") as fh:
        fh.write(CONF.format(port=port, db=os.path.join(home, "db", "state.db")))
    env = {**os.environ, "PYTHONPATH": src}
    log = open(os.path.join(home, "server.log"), "w")  # noqa: SIM115 - the server's
    proc = subprocess.Popen([sys.executable, "-m", "wfm_orchestrator.cli", "--log-level",
                             "WARNING", "serve", "--config", conf], stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"server did not listen: see {log.name}")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def post(port: int, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as answer:  # noqa: S310 - loopback
        return json.load(answer)


def fill(port: int, count: int) -> None:
    """``count`` reservations of 1 to 8 cores: the 6,400 cores fill, the rest queue."""
    for i in range(count):
        post(port, "/v1.0.0/ephemeralservice/reserve",
             {"name": f"bench_m_{i}", "user": USER, "user_slurm_token": "t", "type": "GBF",
              "attributes": {"cores": 1 + i % 8, "gssize": 16, "mountpoint": "/m"}})


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:  # noqa: S310
        return r.read()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Scraper(threading.Thread):
    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port, self.done, self.scrapes, self.bytes = port, threading.Event(), 0, 0

    def run(self) -> None:
        while not self.done.wait(1.0):
            self.bytes = len(get(self.port, "/metrics"))
            self.scrapes += 1


def load(port: int, duration: int, cpu: int, scrape: bool) -> tuple[float, int]:
    scraper = Scraper(port)
    if scrape:
        scraper.start()
    r = wrk(f"http://127.0.0.1:{port}/v1.0.0/ephemeralservice/status/bench_m_0", duration,
            16, None, cpu)
    scraper.done.set()
    return r["rps"], scraper.scrapes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reservations", type=int, default=2000)
    p.add_argument("--baseline-src", help="a src/ tree without metrics, for (3)")
    args = p.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    client = cpus[-1]
    os.sched_setaffinity(0, [client])  # the scraper thread with wrk, not with the server
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 CPUs; others' runs share them)")
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start(tmp, SRC)
        try:
            fill(port, args.reservations)
            body = get(port, "/metrics")
            lines = body.count(b"\n")
            print(f"{args.reservations} reservations; /metrics: {len(body):,} bytes, "
                  f"{lines:,} lines")
            before = cpu_seconds(proc.pid)
            t0 = time.perf_counter()
            for _ in range(50):
                get(port, "/metrics")
            wall = (time.perf_counter() - t0) / 50
            per_scrape = (cpu_seconds(proc.pid) - before) / 50
            print(f"one scrape: {per_scrape * 1000:.1f} ms of server CPU ({wall * 1000:.1f} ms "
                  f"wall): {per_scrape * 100:.2f}% of one CPU at one scrape a second")
            rows = []
            for i in range(args.rounds):
                for scrape in (False, True):
                    rps, n = load(port, args.duration, client, scrape)
                    rows.append((i, scrape, rps, n))
                    print(f"round {i + 1}: {'with' if scrape else 'without':7} scraping: "
                          f"{rps:8.0f} req/s ({n} scrapes)", flush=True)
        finally:
            stop(proc)
        diffs = []
        for i in range(args.rounds):
            off = next(r for r in rows if r[0] == i and not r[1])[2]
            on = next(r for r in rows if r[0] == i and r[1])[2]
            diffs.append((on - off) / off * 100)
        print(f"with scraping, per round: {', '.join(f'{d:+.1f}%' for d in diffs)}; "
              f"median {statistics.median(diffs):+.1f}%")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        if args.baseline_src:
            rates = {"baseline": [], "this tree": []}
            for _ in range(args.rounds):
                for name, src in (("baseline", args.baseline_src), ("this tree", SRC)):
                    proc, port = start(tmp, src)
                    try:
                        post(port, "/v1.0.0/ephemeralservice/reserve",
                             {"name": "bench_m_0", "user": USER, "user_slurm_token": "t",
                              "type": "GBF", "attributes": {"cores": 1, "gssize": 16,
                                                            "mountpoint": "/m"}})
                        rates[name].append(load(port, args.duration, client, False)[0])
                    finally:
                        stop(proc)
                    print(f"{name:9}: {rates[name][-1]:8.0f} req/s", flush=True)
            base = statistics.median(rates["baseline"])
            ours = statistics.median(rates["this tree"])
            print(f"request path, no scraping: baseline {base:.0f}, this tree {ours:.0f} req/s "
                  f"(median of {args.rounds}): {(ours - base) / base * 100:+.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
