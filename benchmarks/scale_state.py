"""Scale (issue #21), the state half: resident memory per live reservation, and restart
to the first answer with 100,000 live reservations and 1,000,000 retained steps.

    PYTHONPATH=src python3 benchmarks/scale_state.py memory  [--datanodes 2000]
    PYTHONPATH=src python3 benchmarks/scale_state.py restart [--datanodes 2000]

Resource-Manager-only (no Slurm). The state is built by the server's own code writing a
state database, not through HTTP: the reservations by ``ResourceManager.reserve`` (the use
case the API calls, so the rows, placements and seq order are exactly the server's), the
ended steps by ``repositories.steps`` (the rows the step manager writes for a step whose
jobs all completed: there is no other way to have a million *ended* steps without Slurm,
and the API would take minutes). Built once per datanode count under ``--cache``
(default /tmp/wfm-scale-state), reused while the schema version is the same.

Then a real ``wfm-orchestrator serve`` (the service's interpreter, as benchmarks/api.py and
scale.py run it: deploy/install's /opt/wfm-orchestrator, Debian's python3, if present, else
this one; ``--python`` to choose; ``src`` of this checkout, a temporary config, a free port
on 127.0.0.1) is started on it:

* memory: VmRSS (/proc/PID/status) of a server holding the reservations, minus that of the
  same server on an empty database, divided by their number (goal <= 1 KB);
* restart: seconds from the process' start to its first answered request (GET
  location/list, polled every 5 ms) on the database with the reservations and the steps
  (goal <= 1 s), median of ``--runs``, after one unmeasured start that writes the
  bytecode (kept under ``--cache``: an installed server has its bytecode compiled).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
sys.path.insert(0, SRC)
sys.path.insert(0, HERE)

from api import SERVICE_PYTHON  # noqa: E402
from bench_user import ordinary_user  # noqa: E402

GOAL_BYTES = 1024
GOAL_RESTART = 1.0

CONF = """listen = 127.0.0.1:{port}
auth = none
state_db = {db}
cpus = auto
slurmrestd_url =
unclaimed_timeout = 0
Location=loc1 ComputeNodes=cn1 Datanodes=dn[1-{n}]
Datanode=dn[1-{n}] Cores=64 MemorySize=256GB StorageSize=8TB
Flavor=small MemorySize=1GB Cores=1
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_conf(home: str, datanodes: int, db: str, port: int = 0) -> str:
    path = os.path.join(home, "wfm.conf")
    with open(path, "w") as fh:
        fh.write(CONF.format(port=port or free_port(), db=db, n=datanodes))
    return path


def _config(home: str, datanodes: int, db: str):
    from wfm_orchestrator.config import load_config
    return load_config(write_conf(home, datanodes, db))


def build_reservations(db: str, datanodes: int, count: int) -> None:
    """``count`` FREE reservations of one core each, made by the resource manager."""
    from wfm_orchestrator.model import parse_reserve
    from wfm_orchestrator.resource_manager import ResourceManager
    from wfm_orchestrator.store import Store

    user = ordinary_user()
    config = _config(os.path.dirname(db), datanodes, db)
    store = Store(db)
    try:
        rm = ResourceManager(config, store)
        for i in range(count):
            body = {"name": f"scale_s{i // 10}_svc{i % 10}", "user": user,
                    "user_slurm_token": "t" * 40, "type": "GBF",
                    "attributes": {"cores": 1, "msize": 16, "gssize": 16, "mountpoint": "/m"}}
            rm.reserve(parse_reserve(body, config))
            if i % 5000 == 4999:
                store.flush()
        store.flush()
        rm.reserve(parse_reserve(body, config))[1].wait(600)
    finally:
        store.close()


def build_steps(db: str, count: int, now: float) -> None:
    """``count`` ended steps (DONE), each with its step job and a stage-in and a stage-out
    data mover, all COMPLETED a day ago (within step_retention: kept)."""
    from dataclasses import replace

    from wfm_orchestrator.model import StepPhase
    from wfm_orchestrator.repositories import steps as rows
    from wfm_orchestrator.steps.records import Step, StepJob
    from wfm_orchestrator.steps.request import DataMover, ServiceUse, StepRequest
    from wfm_orchestrator.steps.status import derive_status
    from wfm_orchestrator.store import Store

    user = ordinary_user()
    store = Store(db, max_batch=1 << 20)
    try:
        base = now - 86400 - count * 0.01
        ticket = None
        for i in range(count):
            name = f"scale_s{i // 100}_step{i % 100}_0"
            svc = f"scale_s{i // 100}_svc0"
            movers = (DataMover("in", svc, "step_start", "copy", "HDD", "NVMe", ("in/*",)),
                      DataMover("out", svc, "step_stop", "copy", "NVMe", "HDD", ("out/*",)))
            req = StepRequest(name, user, (), "run.sh", {}, (ServiceUse(svc, "RW", movers),),
                              f"/home/{user}")
            t = base + i * 0.01
            step = Step(name, user, req, f"{i:012x}", StepPhase.DONE, "", None, t, t + 9,
                        mover_secret="s" * 32)
            jobs = [StepJob(name, key, 1000 + 3 * i + k, "COMPLETED", "", "cn1", 0, "",
                            None, t + 3 * k + 3)
                    for k, key in enumerate(("dm:in", "main", "dm:out"))]
            step = replace(step, updated=t + 9)
            status, detail, when = derive_status(step, {j.key: j for j in jobs})
            ticket = store.write([rows.save_step(step, when, (status, detail)),
                                  *map(rows.save_job, jobs)])
            if i % 20000 == 19999:
                store.flush()
        if ticket is not None:
            ticket.wait(3600)
    finally:
        store.close()


def schema_version() -> str:
    """The schema's version and a digest of its text: a database is rebuilt when it moved."""
    from wfm_orchestrator.store import MIGRATIONS
    return f"{len(MIGRATIONS)}-{hashlib.sha256(''.join(MIGRATIONS).encode()).hexdigest()[:8]}"


def prepare(cache: str, datanodes: int, reservations: int, steps: int) -> dict[str, str]:
    """Paths of three databases (empty, reservations, reservations + steps), built once."""
    tag = f"v{schema_version()}-dn{datanodes}-r{reservations}-s{steps}"
    base = os.path.join(cache, tag)
    dbs = {kind: os.path.join(base, kind, "state.db") for kind in ("empty", "rm", "full")}
    done = os.path.join(base, "done")
    if os.path.exists(done):
        return dbs
    shutil.rmtree(base, ignore_errors=True)
    for db in dbs.values():
        os.makedirs(os.path.dirname(db), mode=0o700)
    from wfm_orchestrator.store import Store
    Store(dbs["empty"]).close()
    started = time.monotonic()
    print(f"building {reservations:,} reservations on {datanodes:,} datanodes ...", flush=True)
    build_reservations(dbs["rm"], datanodes, reservations)
    print(f"  {time.monotonic() - started:.0f} s", flush=True)
    shutil.copy(dbs["rm"], dbs["full"])
    os.chmod(dbs["full"], 0o600)
    started = time.monotonic()
    print(f"building {steps:,} ended steps ...", flush=True)
    build_steps(dbs["full"], steps, time.time())
    print(f"  {time.monotonic() - started:.0f} s", flush=True)
    open(done, "w").close()
    return dbs


class Server:
    """``wfm-orchestrator serve`` on ``db``: ``python`` (the service's), this checkout's src."""

    src = SRC  # --src: another checkout's, for before/after figures
    python = sys.executable  # --python
    # Compiled bytecode, as an installed server has it (pip compiles at install): without
    # it (PYTHONDONTWRITEBYTECODE=1 in this machine's shells) every start compiled the
    # ~110 modules it imports, ~0.1 s of each measured restart. Kept under --cache.
    pycache = ""

    def __init__(self, db: str, datanodes: int):
        self.home = tempfile.mkdtemp(prefix="wfm-scale-")
        self.port = free_port()
        conf = write_conf(self.home, datanodes, db, self.port)
        env = dict(os.environ, PYTHONPATH=self.src)
        if self.pycache:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = self.pycache
        self.log = open(os.path.join(self.home, "server.log"), "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [self.python, "-m", "wfm_orchestrator.cli", "--log-level", "WARNING", "serve",
             "--config", conf], stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def first_answer(self, timeout: float = 120.0) -> float:
        """Seconds from the start to the first 200 (GET location/list)."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited {self.proc.returncode}: see {self.log.name}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/v1.0.0/location/list")
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.005)
        raise SystemExit(f"no answer in {timeout} s: see {self.log.name}")

    def cpu_seconds(self) -> float:
        """CPU time the server used so far (user + system): what a start costs whatever
        else shares the CPU (the wall time to the first answer also counts the waits)."""
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kb(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise SystemExit("no VmRSS")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.home, ignore_errors=True)


def settled_rss(db: str, datanodes: int) -> tuple[int, float]:
    """(VmRSS in kB once the server answered and settled, seconds to the first answer)."""
    server = Server(db, datanodes)
    try:
        took = server.first_answer()
        time.sleep(2.0)  # past the start's transient allocations
        return server.rss_kb(), took
    finally:
        server.stop()


def reserve_through_api(server: Server, count: int) -> None:
    """``count`` reservations like build_reservations', through POST reserve (keep-alive)."""
    user = ordinary_user()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for i in range(count):
            body = json.dumps({"name": f"scale_s{i // 10}_svc{i % 10}", "user": user,
                               "user_slurm_token": "t" * 40, "type": "GBF",
                               "attributes": {"cores": 1, "msize": 16, "gssize": 16,
                                              "mountpoint": "/m"}})
            conn.request("POST", "/v1.0.0/ephemeralservice/reserve", body,
                         {"Content-Type": "application/json"})
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise SystemExit(f"reserve {i}: {answer.status}")
    finally:
        conn.close()


def cmd_memory(args: argparse.Namespace, dbs: dict[str, str]) -> list[str]:
    out = []
    for _ in range(args.runs):
        if args.through_api:
            home = tempfile.mkdtemp(prefix="wfm-scale-db-")
            server = Server(os.path.join(home, "state.db"), args.datanodes)
            try:
                took = server.first_answer()
                time.sleep(2.0)
                empty = server.rss_kb()
                reserve_through_api(server, args.reservations)
                time.sleep(2.0)
                full = server.rss_kb()
            finally:
                server.stop()
                shutil.rmtree(home, ignore_errors=True)
            how = "made through the API, same server"
        else:
            empty, _ = settled_rss(dbs["empty"], args.datanodes)
            full, took = settled_rss(dbs["rm"], args.datanodes)
            how = "loaded at start"
        per = (full - empty) * 1024 / args.reservations
        out.append(f"memory  datanodes={args.datanodes:,} reservations={args.reservations:,} "
                   f"({how}): VmRSS {full / 1024:.1f} MB - empty {empty / 1024:.1f} MB = "
                   f"{per:.0f} B per live reservation (goal <= {GOAL_BYTES} B: "
                   f"{per / GOAL_BYTES:.2f}x the goal, "
                   f"{'met' if per <= GOAL_BYTES else 'NOT met'}); first answer {took:.2f} s")
        print(out[-1], flush=True)
    return out


def cmd_restart(args: argparse.Namespace, dbs: dict[str, str]) -> list[str]:
    warm = Server(dbs["empty"], args.datanodes)  # not measured: writes the bytecode
    try:
        warm.first_answer()
    finally:
        warm.stop()
    times, cpus = [], []
    for _ in range(args.runs):
        server = Server(dbs["full"], args.datanodes)
        try:
            times.append(server.first_answer())
            cpus.append(server.cpu_seconds())
            rss = server.rss_kb()
        finally:
            server.stop()
        print(f"  run: first answer after {times[-1]:.3f} s (server CPU {cpus[-1]:.2f} s, "
              f"load average {os.getloadavg()[0]:.1f}), VmRSS {rss / 1024:.0f} MB", flush=True)
    med = statistics.median(times)
    line = (f"restart datanodes={args.datanodes:,} reservations={args.reservations:,} "
            f"steps={args.steps:,}: first answer after {med:.3f} s median of {len(times)} "
            f"(min {min(times):.3f}, max {max(times):.3f}; goal <= {GOAL_RESTART} s: "
            f"{med / GOAL_RESTART:.2f}x the goal, "
            f"{'met' if max(times) <= GOAL_RESTART else 'NOT met'}; server CPU to the first "
            f"answer median {statistics.median(cpus):.2f} s)")
    print(line, flush=True)
    return [line]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("memory", "restart"))
    p.add_argument("--datanodes", type=int, default=2000)
    p.add_argument("--reservations", type=int, default=100_000)
    p.add_argument("--steps", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--through-api", action="store_true",
                   help="memory: make the reservations through POST reserve on a running "
                        "server (RSS before and after, same process) instead of loading them")
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "wfm-scale-state"),
                   help="where the built databases are kept (reused while the schema is)")
    p.add_argument("--src", default=SRC,
                   help="the src directory the server runs from (default: this checkout's); "
                        "the databases are always built by this checkout's code")
    p.add_argument("--python", default=SERVICE_PYTHON if os.path.exists(SERVICE_PYTHON)
                   else sys.executable,
                   help=f"the server's interpreter (default {SERVICE_PYTHON} if present: the "
                        "service's own, Debian's python3 built with PGO and LTO)")
    args = p.parse_args(argv)
    print(f"server interpreter: {args.python}", flush=True)
    Server.src = os.path.abspath(args.src)
    Server.python = args.python
    Server.pycache = os.path.join(args.cache, "pycache")
    dbs = {} if args.command == "memory" and args.through_api else \
        prepare(args.cache, args.datanodes, args.reservations,
                args.steps if args.command == "restart" else 0)
    {"memory": cmd_memory, "restart": cmd_restart}[args.command](args, dbs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
