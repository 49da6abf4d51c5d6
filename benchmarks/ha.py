"""Durable reserve + DELETE pairs through the HTTP API, on PostgreSQL and on SQLite.

    sudo deploy/hacluster up
    PYTHONPATH=src python3 benchmarks/ha.py [--duration 8] [--connections 8] [--repeat 3]

Issue #20's goal: >= 1,500 durable reserve+release pairs/s with 8 clients when the state
is on the replicated PostgreSQL (each answer sent after its commit, which returns once the
synchronous standby has it). Starts `wfm-orchestrator serve` (benchmarks/api.py's server:
Resource Manager only, auth = none, loopback, 100 datanodes, pinned to one CPU) on a fresh
PostgreSQL schema of the local HA cluster (`deploy/hacluster dsn`), then on a fresh SQLite
file, and loads each with wrk (`-t1 -c8`, keep-alive) on the other CPU: the pairs/s of
both and their ratio. Needs wrk (apt-get install wrk), root (the cluster's connection
string) and psycopg.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile

import psycopg
from api import CONF, PAIRS_LUA, USER, ms, start_server, stop_server, wrk

HERE = os.path.dirname(os.path.abspath(__file__))
HACLUSTER = os.path.join(os.path.dirname(HERE), "deploy", "hacluster")


def cluster_dsn() -> str:
    out = subprocess.run([HACLUSTER, "dsn"], capture_output=True, text=True, timeout=30,
                         check=False)
    if out.returncode != 0:
        raise SystemExit(f"deploy/hacluster dsn failed (is the cluster up? root?): {out.stderr}")
    return out.stdout.strip()


def pairs(args: argparse.Namespace, tmp: str, lua: str, state_db: str | None) -> dict:
    """One server on ``state_db`` (None: a fresh SQLite file), loaded for the duration."""
    template = CONF if state_db is None else CONF.replace("{db}", state_db)
    proc, port = start_server(tmp, "auto", args.python, "WARNING", template=template)
    try:
        return wrk(f"http://127.0.0.1:{port}", args.duration, args.connections, lua,
                   sorted(os.sched_getaffinity(0))[-1])
    finally:
        stop_server(proc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=int, default=8)
    p.add_argument("--connections", type=int, default=8, help="clients (keep-alive)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each; medians shown")
    p.add_argument("--python", default=sys.executable,
                   help="the server's interpreter (with psycopg; default: this one)")
    args = p.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    dsn = cluster_dsn()
    results: dict[str, list[dict]] = {"postgresql": [], "sqlite": []}
    with tempfile.TemporaryDirectory() as tmp:
        lua = os.path.join(tmp, "pairs.lua")
        with open(lua, "w") as fh:
            fh.write(f'DELETE_AFTER = true\nPREFIX = "p"\nUSER = "{USER}"\n' + PAIRS_LUA)
        for _ in range(args.repeat):
            schema = f"bench_{secrets.token_hex(4)}"
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"CREATE SCHEMA {schema}")
            try:
                sep = "&" if "?" in dsn else "?"
                results["postgresql"].append(
                    pairs(args, tmp, lua, f"{dsn}{sep}options=-csearch_path%3D{schema}"))
            finally:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA {schema} CASCADE")
            results["sqlite"].append(pairs(args, tmp, lua, None))
    print(f"wrk -t1 -c{args.connections} -d{args.duration}s, server pinned to one CPU; "
          f"{args.repeat} run(s) each, medians (range)")
    print(f"{'state_db':12} {'pairs/s':>9} {'range':>15} {'p50':>9} {'p99':>9} {'non-2xx':>8}")
    rate = {}
    for engine, runs in results.items():
        rates = [r["rps"] / 2 for r in runs]
        rate[engine] = statistics.median(rates)
        print(f"{engine:12} {rate[engine]:9.0f} {min(rates):7.0f}-{max(rates):<7.0f} "
              f"{statistics.median(ms(r['p50']) for r in runs):7.2f}ms "
              f"{statistics.median(ms(r['p99']) for r in runs):7.2f}ms "
              f"{sum(r['non2xx'] for r in runs):8d}")
    print(f"PostgreSQL / SQLite: {rate['postgresql'] / rate['sqlite']:.2f}; goal on "
          f"PostgreSQL: >= 1,500 pairs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
