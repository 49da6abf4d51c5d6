"""CPU per request through the whole server, in one process: for A/B comparisons.

    PYTHONPATH=src /opt/wfm-orchestrator/bin/python benchmarks/server_path.py [--requests 20000]
        [--fast-path on|off]

`benchmarks/api.py` measures throughput with wrk, which this VM's ±5-10% drift between
periods blurs. This script measures what a change costs or saves instead: a real server
(http.server.create_server with the orchestrator's application and store, Resource
Manager only, auth = none) and 16 keep-alive client connections share one CPU; the loop
is turned by hand and the process CPU time (server, store writer, client; with
``--fast-path off``, stock waitress' worker threads too) is divided by the requests
answered. Run it before and after a change, a few times each.

1. POST ephemeralservice/reserve, every one a new name (durable: each answer waits for
   its group commit; after ~6,400 the pool is full and the rest queue);
2. GET ephemeralservice/status/{name}.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import socket
import statistics
import tempfile
import time

from bench_user import ordinary_user

from wfm_orchestrator.cli import build_all
from wfm_orchestrator.config import parse_config
from wfm_orchestrator.http.server import create_server

CONF = """listen = 127.0.0.1:9
auth = none
state_db = {db}
slurmrestd_url =
Location=loc1 ComputeNodes=cn1 Datanodes=dn[1-100]
Datanode=dn[1-100] Cores=64 MemorySize=256GB StorageSize=8TB
Flavor=small MemorySize=1GB Cores=1
"""
CONNECTIONS = 16


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000, help="per measure and run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fast-path", choices=("on", "off"), default="on",
                        help="as wfm.conf's fast_path (off: stock waitress)")
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})
    # As cli.main: waitress warns for every request queued behind a busy worker.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)

    tmp = tempfile.mkdtemp()
    app, nonblocking, _rm, _services, _steps, store = build_all(
        parse_config(CONF.format(db=os.path.join(tmp, "state.db"))))
    server = create_server(app, "127.0.0.1", 0, 2, nonblocking,
                           fast_path=args.fast_path == "on", turn_end=(store.flush,))
    port = server.socket.getsockname()[1]
    server.enter_loop()
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONNECTIONS)]
    for client in clients:
        client.setblocking(False)

    def turn() -> None:  # one iteration of the server's loop (http/server.py run_loop)
        server.turn(0.01)

    names = itertools.count()
    user = ordinary_user().encode()

    def reserve() -> bytes:
        body = (b'{"name":"bench_%d","user":"%s","user_slurm_token":"t","type":"GBF",'
                b'"attributes":{"cores":1,"msize":16,"gssize":16,"mountpoint":"/m"}}'
                % (next(names), user))
        return (b"POST /v1.0.0/ephemeralservice/reserve HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % len(body)) + body

    def status() -> bytes:
        return b"GET /v1.0.0/ephemeralservice/status/bench_1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

    def measure(make) -> float:
        for client in clients:
            client.send(make())
        answered = 0
        started = time.process_time()
        while answered < args.requests:
            turn()
            for client in clients:
                try:
                    data = client.recv(65536)
                except BlockingIOError:
                    continue
                heads = data.count(b"HTTP/1.1 ")
                if heads != data.count(b"HTTP/1.1 200 "):
                    raise SystemExit(f"unexpected answer: {data[:300]!r}")
                if heads:  # a worker thread may send the head and the body apart
                    answered += heads
                    client.send(make())
        return (time.process_time() - started) / answered * 1e6

    for _ in range(5):
        turn()
    results: dict[str, list[float]] = {"reserve": [], "status": []}
    for _ in range(args.repeat):
        results["reserve"].append(measure(reserve))
        results["status"].append(measure(status))
    print(f"fast_path = {args.fast_path}")
    print(f"{'measure':10} {'median':>8}  runs (µs of CPU per request)")
    for name, runs in results.items():
        print(f"{name:10} {statistics.median(runs):8.1f}  " + " ".join(f"{r:.1f}" for r in runs))
    server.close()
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
