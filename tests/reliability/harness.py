"""What the reliability suites share: a real orchestrator process, an HTTP client, checks.

The server is ``python -m wfm_orchestrator.cli serve`` started with a
temporary configuration; it can be stopped cleanly or killed with SIGKILL.
The checks read the committed state straight from the SQLite file (or the PostgreSQL
schema of a ``state_db`` URL) and compare it with what the server answers.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import SMALL_CONF
from tests.conftest import server_env as conftest_server_env

# One free-port helper for every suite that starts a server: tests/integration's.
from tests.integration.raw_server import free_port  # noqa: F401 - used by the suites
from tests.poll import poll_until
from wfm_orchestrator.repositories.reservations import stored_request_of

# SMALL_CONF's inventory: dn[1-4] Cores=8 MemorySize=16GB StorageSize=1TB.
SMALL_CAPACITY = {f"dn{i}": (frozenset(range(8)), 16 * 1024, 1024 * 1024) for i in range(1, 5)}


def env_int(name: str, default: int) -> int:
    """A figure of a suite: ``default`` (the CI scale) unless the environment says otherwise."""
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def small_config(directory: str, port: int, queue_policy: str = "fifo", extra: str = "",
                 state_db: str | None = None) -> str:
    """SMALL_CONF on ``127.0.0.1:port`` with its state in ``directory`` (or ``state_db``);
    returns the path."""
    conf = SMALL_CONF.format(state_db=state_db or os.path.join(directory, "state.db"),
                             queue_policy=queue_policy)
    conf = conf.replace("listen = 127.0.0.1:8080", f"listen = 127.0.0.1:{port}") + extra
    path = os.path.join(directory, "wfm.conf")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(conf)
    return path


def server_env(**extra: str) -> dict[str, str]:
    """The environment of a server child: the package this test run imported, no fault."""
    env = conftest_server_env()
    env.pop("WFM_FAULT", None)
    env.update(extra)
    return env


def run_cli(config: str, timeout: float = 15, **env: str) -> subprocess.CompletedProcess:
    """``serve`` expected to exit by itself (refusal): its exit code and output."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "wfm_orchestrator.cli", "serve", "--config", config],
            capture_output=True, text=True, timeout=timeout, env=server_env(**env),
            cwd=os.path.dirname(config))
    except subprocess.TimeoutExpired as e:
        out = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) \
            else (e.stderr or "")
        pytest.fail(f"serve --config {config} was expected to refuse to start, but it was "
                    f"still running after {timeout:g} s (killed):\n{out[-1500:]}")


@dataclass
class Orchestrator:
    """One ``wfm-orchestrator serve`` process at a time on ``config``."""

    config: str
    port: int
    log_path: str
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    starts: int = 0

    def start(self, timeout: float = 30.0, **env: str) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {self.starts} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "wfm_orchestrator.cli", "serve", "--config", self.config],
                stdout=log, stderr=subprocess.STDOUT, env=server_env(**{**self.env, **env}),
                cwd=os.path.dirname(self.config))
        self.wait_listening(timeout)

    def wait_listening(self, timeout: float) -> None:
        proc = self.proc
        assert proc is not None

        def listening() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"orchestrator exited with {proc.returncode} before "
                            f"listening on {self.port}:\n{self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                return False
            return True

        try:
            poll_until(listening, f"orchestrator listening on 127.0.0.1:{self.port}", timeout,
                       0.05, last=self.log_tail)
        except AssertionError:
            self.kill()
            raise

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> int:
        """SIGKILL (kill -9) and reap; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(30)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to end by itself (a fault point): its exit status."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"orchestrator still running {timeout:g} s after it should have "
                        f"stopped itself:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return "".join(fh.readlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class Transport(Exception):
    """No complete answer: the request may or may not have been applied."""


class Http:
    """A keep-alive HTTP/1.1 connection; one per thread."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                       timeout=self.timeout)
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise Transport(f"{method} {path}: {type(e).__name__}: {e}") from None
        if resp.will_close:
            self.close()
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, raw.decode(errors="replace")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def gbf(name: str, cores: int, msize: int, ssize: int = 0, servers: int = 1,
        user: str = "alice") -> dict[str, Any]:
    """A reserve body with explicit per-server demand (MB)."""
    return {"name": name, "user": user, "user_slurm_token": "tok", "type": "GBF",
            "servers": servers,
            "attributes": {"cores": cores, "msize": msize, "gssize": ssize * servers,
                           "mountpoint": "/mnt/x"}}


# --- the committed state ---------------------------------------------------------


@dataclass
class Row:
    name: str
    state: str
    seq: int
    request: dict[str, Any]
    placement: list[list[Any]] | None


def read_rows(db: str) -> dict[str, Row]:
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db) as pg:
            rows = pg.execute("SELECT name, state, seq, request, placement FROM reservation"
                              ).fetchall()
    else:
        conn = sqlite3.connect(db, timeout=30)
        try:
            rows = conn.execute("SELECT name, state, seq, request, placement FROM reservation"
                                ).fetchall()
        finally:
            conn.close()
    return {n: Row(n, s, q, stored_request_of(n, None, r)._asdict(),
                  json.loads(p) if p is not None else None)
            for n, s, q, r, p in rows}


def integrity(db: str) -> str:
    """SQLite's integrity_check; "ok" for PostgreSQL, which checks its pages as it reads
    them (the HA cluster runs with data checksums): read_rows read them all."""
    if db.startswith("postgresql://"):
        return "ok"
    conn = sqlite3.connect(db, timeout=30)
    try:
        return "; ".join(r[0] for r in conn.execute("PRAGMA integrity_check"))
    finally:
        conn.close()


LIVE = ("FREE", "ALLOCATED")


def placement_problems(rows: dict[str, Row]) -> list[str]:
    """Every row is whole: a held reservation has the placement its request asks for."""
    problems = []
    for row in rows.values():
        req = row.request
        if row.state in LIVE:
            if row.placement is None:
                problems.append(f"{row.name}: {row.state} without a placement")
                continue
            servers = [p[0] for p in row.placement]
            if len(servers) != req["servers"] or len(set(servers)) != len(servers):
                problems.append(f"{row.name}: placement on {servers}, asked "
                                f"{req['servers']} distinct datanodes")
            for server, cores, msize, ssize in row.placement:
                if (len(cores), msize, ssize) != (req["cores"], req["msize"], req["ssize"]):
                    problems.append(f"{row.name}: {server} holds {len(cores)} cores, {msize} "
                                    f"MB, {ssize} MB; asked {req['cores']}, {req['msize']}, "
                                    f"{req['ssize']}")
        elif row.state == "QUEUED" and row.placement is not None:
            problems.append(f"{row.name}: QUEUED with a placement {row.placement}")
        elif row.state not in ("QUEUED", "RELEASED"):
            problems.append(f"{row.name}: unknown state {row.state!r}")
    return problems


def held(rows: dict[str, Row]) -> dict[str, tuple[Counter, int, int]]:
    """Per datanode: core ids held (with multiplicity), memory and storage held (MB)."""
    out: dict[str, tuple[Counter, int, int]] = defaultdict(lambda: (Counter(), 0, 0))
    for row in rows.values():
        if row.state in LIVE and row.placement:
            for server, cores, msize, ssize in row.placement:
                c, m, s = out[server]
                c.update(cores)
                out[server] = (c, m + msize, s + ssize)
    return out


def overcommits(rows: dict[str, Row], capacity: dict[str, tuple[frozenset, int, int]]
                ) -> list[str]:
    """Datanodes whose held resources exceed their capacity (or share a core)."""
    problems = []
    for server, (cores, msize, ssize) in held(rows).items():
        if server not in capacity:
            problems.append(f"{server}: not a configured datanode")
            continue
        cap_cores, cap_m, cap_s = capacity[server]
        shared = sorted(c for c, n in cores.items() if n > 1)
        foreign = sorted(set(cores) - cap_cores)
        if shared:
            problems.append(f"{server}: cores {shared} held by two reservations")
        if foreign:
            problems.append(f"{server}: cores {foreign} do not exist")
        if msize > cap_m:
            problems.append(f"{server}: {msize} MB of memory held, capacity {cap_m}")
        if ssize > cap_s:
            problems.append(f"{server}: {ssize} MB of storage held, capacity {cap_s}")
    return problems


def resources_problems(answer: list[dict[str, Any]], rows: dict[str, Row],
                       capacity: dict[str, tuple[frozenset, int, int]]) -> list[str]:
    """GET server/resources/all agrees with the committed reservations, and is in range."""
    problems = []
    h = held(rows)
    for entry in answer:
        server, res = entry["server_name"], entry["server_resources"]
        cap_cores, cap_m, cap_s = capacity[server]
        cores, msize, ssize = h.get(server, (Counter(), 0, 0))
        expect_free = sorted(cap_cores - set(cores))
        if not (0 <= res["free_msize"] <= cap_m and 0 <= res["free_ssize"] <= cap_s
                and 0 <= res["free_cores"] <= len(cap_cores)):
            problems.append(f"{server}: free out of range: {res}")
        if (sorted(res["free_core_list"]), res["free_msize"], res["free_ssize"]) != (
                expect_free, cap_m - msize, cap_s - ssize):
            problems.append(
                f"{server}: the server says free cores {res['free_core_list']}, "
                f"{res['free_msize']} MB, {res['free_ssize']} MB; the database holds "
                f"{sorted(cores)}, {msize} MB, {ssize} MB")
    return problems


def figures(title: str, **values: Any) -> str:
    """One printed line of figures, e.g. ``kill9: kills survived=20 ...``."""
    line = f"[reliability] {title}: " + ", ".join(f"{k.replace('_', ' ')}={v}"
                                                  for k, v in values.items())
    print(line, flush=True)
    return line
