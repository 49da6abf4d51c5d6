"""HTTP benchmark of the orchestrator: wrk on one core, the server on the other.

    python3 benchmarks/api.py [--duration 8] [--connections 16] [--repeat 5]

Needs wrk (apt-get install wrk) and the installed package. Starts
`wfm-orchestrator serve` with the service environment's interpreter (deploy/install's
/opt/wfm-orchestrator: Debian's python3; `--python` to choose another) on a scratch
state database (Resource Manager only, auth = none, loopback), then measures with wrk
pinned to the other CPU:

1. GET /v1.0.0/ephemeralservice/status/{name}            goal: >= 5,000 req/s, p99 <= 15 ms
2. durable reserve + DELETE allocation pairs              goal: >= 1,500 pairs/s
3. durable reservations alone (group commit)              goal: >= 3,000 reservations/s
4. (1) again with the server on both CPUs (cpus = all), to show why `cpus = auto` pins it.

Figures are printed as a table; record them in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from bench_user import ordinary_user

HERE = os.path.dirname(os.path.abspath(__file__))
# The service environment deploy/install makes (Debian's python3): what is deployed.
USER = ordinary_user()  # reservations name an existing ordinary account
SERVICE_PYTHON = os.path.join(os.environ.get("WFM_VENV", "/opt/wfm-orchestrator"), "bin", "python")

CONF = """listen = 127.0.0.1:{port}
auth = none
state_db = {db}
cpus = {cpus}
slurmrestd_url =
Location=loc1 ComputeNodes=cn1 Datanodes=dn[1-100]
Datanode=dn[1-100] Cores=64 MemorySize=256GB StorageSize=8TB
Flavor=small MemorySize=1GB Cores=1
"""

# One thread, 16 connections: each reserve that succeeds queues its DELETE, so
# requests alternate reserve / delete and every name is used once (PREFIX keeps the
# pairs' names apart from the reservations': every reservation is a new one).
PAIRS_LUA = r"""
local counter = 0
local pending = {}
local pairs_done = 0
local errors = 0
local head = 0
function request()
  if #pending > 0 then
    local name = table.remove(pending)
    return wrk.format("DELETE", "/v2.0.0/server/allocation/" .. name)
  end
  counter = counter + 1
  local name = "bench_" .. PREFIX .. id .. "_" .. counter
  head = name
  local body = '{"name":"' .. name .. '","user":"' .. USER .. '",' ..
    '"user_slurm_token":"t","type":"GBF",' ..
    '"attributes":{"cores":1,"msize":16,"gssize":16,"mountpoint":"/m"}}'
  return wrk.format("POST", "/v1.0.0/ephemeralservice/reserve",
                    {["Content-Type"] = "application/json"}, body)
end
function response(status, headers, body)
  if status == 200 then
    local name = string.match(body, '"name":"([^"]+)","status"')
    if name then
      if DELETE_AFTER then table.insert(pending, name) end
    else
      pairs_done = pairs_done + 1
    end
  else
    errors = errors + 1
  end
end
function setup(thread) thread:set("id", math.random(1, 1e9)) end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp: str, cpus: str, python: str, log_level: str = "WARNING",
                 template: str = CONF) -> tuple[subprocess.Popen, int]:
    """``wfm-orchestrator serve`` on a free port and a fresh state database, with the
    configuration ``template`` (formatted with port, db and cpus); (process, port)."""
    port = free_port()
    home = tempfile.mkdtemp(dir=tmp)  # a fresh state database for every server
    conf = os.path.join(home, "wfm.conf")
    with open(conf, "w") as fh:
        fh.write(template.format(port=port, db=os.path.join(home, "state.db"), cpus=cpus))
    log = open(os.path.join(home, "server.log"), "w")
    proc = subprocess.Popen(
        [python, "-m", "wfm_orchestrator.cli", "--log-level", log_level, "serve",
         "--config", conf], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"server did not listen on {port}: see {log.name}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def wrk(url: str, duration: int, connections: int, script: str | None, cpu: int) -> dict:
    cmd = ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}", f"-d{duration}s",
           "--latency", "--timeout", "5s"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=duration + 60,
                         check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": lat.get("50"), "p99": lat.get("99"),
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "raw": out}


def ms(text: str | None) -> float:
    if not text:
        return float("nan")
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def reserve(port: int, name: str) -> None:
    body = json.dumps({"name": name, "user": USER, "user_slurm_token": "t", "type": "GBF",
                       "attributes": {"cores": 1, "gssize": 16, "mountpoint": "/m"}})
    subprocess.run(["curl", "-sf", "-X", "POST", "-H", "Content-Type: application/json",
                    "-d", body, f"http://127.0.0.1:{port}/v1.0.0/ephemeralservice/reserve"],
                   check=True, timeout=10, capture_output=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=int, default=8)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--log-level", default="WARNING", choices=["INFO", "WARNING"],
                   help="the server's; INFO writes the access log (to a file here)")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs, each on a fresh server; the table shows their medians")
    p.add_argument("--python", default=SERVICE_PYTHON if os.path.exists(SERVICE_PYTHON)
                   else sys.executable,
                   help="the server's interpreter (default: the service environment made by "
                        f"deploy/install, {SERVICE_PYTHON}, if present; else this one)")
    args = p.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    cpus = sorted(os.sched_getaffinity(0))
    client_cpu = cpus[-1]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        lua_pairs = os.path.join(tmp, "pairs.lua")
        with open(lua_pairs, "w") as fh:
            fh.write(f'DELETE_AFTER = true\nPREFIX = "p"\nUSER = "{USER}"\n' + PAIRS_LUA)
        lua_reserve = os.path.join(tmp, "reserve.lua")
        with open(lua_reserve, "w") as fh:
            fh.write(f'DELETE_AFTER = false\nPREFIX = "r"\nUSER = "{USER}"\n' + PAIRS_LUA)
        for _ in range(args.repeat):
            runs.append(run_once(args, tmp, lua_pairs, lua_reserve, client_cpu))

    version = subprocess.run([args.python, "-c", "import sys, wfm_orchestrator as w; "
                              "print(sys.version.split()[0], w.__file__)"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    print(f"server: {args.python} (Python {version})")
    print(f"server: cpus=auto pins it to CPU {cpus[0]}; wrk -t1 -c{args.connections} "
          f"-d{args.duration}s on CPU {client_cpu}; {args.repeat} run(s), each on a fresh "
          "server and database")
    print(f"{'measure':42} {'rate':>10} {'unit':15} {'p50':>9} {'p99':>9} {'non-2xx':>8}  goal"
          + ("   (median of the runs; range)" if args.repeat > 1 else ""))
    for i, (name, _, unit, _, _, _, goal) in enumerate(runs[0]):
        rates = [run[i][1] for run in runs]
        p50 = statistics.median(ms(run[i][3]) for run in runs)
        p99 = statistics.median(ms(run[i][4]) for run in runs)
        non2xx = sum(run[i][5] for run in runs)
        spread = f"   ({min(rates):.0f} to {max(rates):.0f})" if args.repeat > 1 else ""
        print(f"{name:42} {statistics.median(rates):10.0f} {unit:15} {p50:8.2f}ms {p99:8.2f}ms "
              f"{non2xx:8d}  {goal}{spread}")
    pinned = statistics.median(run[0][1] for run in runs)
    unpinned = statistics.median(run[-1][1] for run in runs)
    print(f"pinned / unpinned GET ratio: {pinned / unpinned:.1f}x")
    return 0


def run_once(args: argparse.Namespace, tmp: str, lua_pairs: str, lua_reserve: str,
             client_cpu: int) -> list[tuple]:
    """One pass over every measure, each server on a fresh state database."""
    rows = []
    for cpus_setting in ("auto", "all"):
        proc, port = start_server(tmp, cpus_setting, args.python, args.log_level)
        try:
            reserve(port, "bench_status_probe")
            base = f"http://127.0.0.1:{port}"
            r = wrk(f"{base}/v1.0.0/ephemeralservice/status/bench_status_probe",
                    args.duration, args.connections, None, client_cpu)
            rows.append((f"GET status/{{name}} (cpus={cpus_setting})", r["rps"], "req/s",
                         r["p50"], r["p99"], r["non2xx"], "5,000 req/s, p99 <= 15 ms"
                         if cpus_setting == "auto" else "-"))
            if cpus_setting == "auto":
                r = wrk(base, args.duration, args.connections, lua_pairs, client_cpu)
                rows.append(("durable reserve + DELETE pairs", r["rps"] / 2, "pairs/s",
                             r["p50"], r["p99"], r["non2xx"], "1,500 pairs/s"))
                r = wrk(base, args.duration, args.connections, lua_reserve, client_cpu)
                rows.append(("durable reservations (group commit)", r["rps"],
                             "reservations/s", r["p50"], r["p99"], r["non2xx"], "3,000/s"))
        finally:
            stop_server(proc)
    return rows


if __name__ == "__main__":
    sys.exit(main())
