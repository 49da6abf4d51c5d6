"""Helpers of the HA suite: deploy/hacluster as a command, its status, the processes it
runs, and a writer that counts the writes the cluster acknowledged."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time

from tests.integration.minicluster import RUN_DIR
from tests.poll import poll_until

from ..conftest import ROOT, server_env

HACLUSTER = os.path.join(ROOT, "deploy", "hacluster")
STATE_DIR = "/var/lib/wfm-hacluster"


def hacluster(*args: str, timeout: float = 300, slurm: str = "no"
              ) -> subprocess.CompletedProcess:
    """Run deploy/hacluster ARGS (as the root running the tests); the orchestrators it
    starts run this interpreter on the package the tests import. ``slurm``: its
    WFM_HACLUSTER_SLURM; "no" unless a test asks, as only a test holding the mini-cluster's
    lock may bind them to it (test_slurm_failover.py)."""
    env = server_env(WFM_HACLUSTER_PYTHON=sys.executable, WFM_HACLUSTER_SLURM=slurm)
    return subprocess.run([HACLUSTER, *args], capture_output=True, text=True, timeout=timeout,
                          check=False, env=env)


def up(slurm: str = "no") -> subprocess.CompletedProcess:
    """`up`; the first one on a machine installs Debian's packages (minutes). An
    orchestrator whose configuration changes (``slurm``) is restarted."""
    out = hacluster("up", timeout=900, slurm=slurm)
    assert out.returncode == 0, f"hacluster up failed:\n{out.stderr}\n{out.stdout}"
    return out


def status() -> dict:
    out = hacluster("status", "--json", timeout=60)
    assert out.returncode in (0, 3), out.stderr
    return json.loads(out.stdout)


def dsn() -> str:
    out = hacluster("dsn", timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def by_role(st: dict) -> dict[str | None, dict]:
    """{"primary": node, "replica": node} of a status (a role seen twice fails)."""
    roles = [p["role"] for p in st["postgres"]]
    assert len(set(roles)) == len(roles), f"two nodes with one role: {st['postgres']}"
    return {p["role"]: p for p in st["postgres"]}


def comm(pid: int) -> str | None:
    """The process' name, None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            stat = fh.read()
    except OSError:
        return None
    name, rest = stat.split("(", 1)[1].rsplit(")", 1)
    return None if rest.split()[0] in ("Z", "X") else name


def parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def descendants(pids: set[int]) -> set[int]:
    """``pids`` and every live process below them (a postmaster's backends, ...)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (ppid := parent(int(entry))) is not None:
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid not in found and comm(pid):
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def processes_using_state_dir() -> dict[int, str]:
    """Live processes whose command line names the cluster's state directory."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if STATE_DIR in argv and comm(int(entry)):
            found[int(entry)] = argv
    return found


def kill9(*pids: int) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


class Writer(threading.Thread):
    """Inserts 0, 1, 2, ... into ``table`` through ``dsn``, one transaction each, and
    records each id the database acknowledged (its commit returned) with the time and
    the port of the node that acknowledged it.

    A write whose commit fails or whose answer never came is not acknowledged: it may be
    in the table or not, both are fine. Reconnects after every error (the two-host
    connection string finds the new primary)."""

    def __init__(self, dsn: str, table: str, pause: float = 0.003):
        super().__init__(daemon=True, name=f"writer-{table}")
        self.dsn, self.table, self.pause = dsn, table, pause
        self.acked: list[tuple[int, float, int]] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        import psycopg

        next_id = 0
        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    while not self.stopping.is_set():
                        conn.execute(f"INSERT INTO {self.table} (id) VALUES (%s)",  # noqa: S608 - the test's own name
                                     (next_id,))
                        self.acked.append((next_id, time.monotonic(), int(conn.info.port)))
                        next_id += 1
                        # Gentle on the machine's shared cores: a few hundred writes/s.
                        self.stopping.wait(self.pause)
            except psycopg.Error as e:
                if not self.errors or self.errors[-1] != str(e):
                    self.errors.append(str(e))
                next_id += 1  # the failed id may or may not be in the table
                self.stopping.wait(0.1)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)
        assert not self.is_alive(), "the writer did not stop"

    def acked_by_another_node(self, port: int) -> list[tuple[int, float, int]]:
        """The writes acknowledged by another node than the one on ``port``."""
        return [a for a in list(self.acked) if a[2] != port]

    def longest_gap(self) -> float:
        """The longest time between two acknowledged writes: how long writes blocked."""
        times = [t for _, t, _ in list(self.acked)]
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


IT_LOCK = "/tmp/wfm-it.lock"  # noqa: S108 - the mini-cluster's lock, shared on purpose


def _lock_held_by_ancestor(path: str) -> bool:
    """Whether one of this process' ancestors holds the flock on ``path`` (``flock
    /tmp/wfm-it.lock pytest ...``): /proc/locks names the locking process and the file's
    inode."""
    try:
        inode = os.stat(path).st_ino
        with open("/proc/locks", encoding="ascii") as fh:
            holders = {int(f[4]) for f in (line.split() for line in fh)
                       if len(f) > 5 and f[1] == "FLOCK" and f[5].rsplit(":", 1)[-1] == str(inode)}
    except (OSError, ValueError):
        return False
    pid = os.getpid()
    while pid and pid > 1:
        if pid in holders:
            return True
        pid = parent(pid) or 0
    return False


@contextlib.contextmanager
def minicluster_lock(wait: float = 1800):
    """The Slurm mini-cluster's lock (docs: take the HA lock first, then this one) for as
    long as the ``with`` lasts, unless the command that runs the tests holds it already."""
    if _lock_held_by_ancestor(IT_LOCK):
        yield
        return
    with open(IT_LOCK, "a+") as lock:
        def taken() -> bool:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        poll_until(taken, f"take {IT_LOCK} (another session holds it)", wait, interval=1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# The plugin waits this long for a leader (docs/burst_buffer_plugin.md, retry_for):
# longer than a failover.
PLUGIN_RETRY_FOR = 60


def plugin_config_path() -> str:
    """The plugin's configuration file as the running slurmctld sees it (Slurm 24.11 runs in
    the mini-cluster's Debian 13 tree, which has its own /etc/slurm)."""
    with open(f"{RUN_DIR}/slurmctld.pid", encoding="ascii") as fh:
        pid = int(fh.read().split()[0])
    return f"/proc/{pid}/root/etc/slurm/burst_buffer_wfm.conf"


@contextlib.contextmanager
def plugin_pointed_at(urls: list[str]):
    """The plugin's orchestrator_url is ``urls`` (with a retry budget longer than a
    failover) for as long as the ``with`` lasts; the file is put back byte for byte."""
    path = plugin_config_path()
    with open(path, encoding="utf-8") as fh:
        original = fh.read()
    keys = ("orchestrator_url", "retry_for")
    lines = [line for line in original.splitlines(keepends=True)
             if line.split("=", 1)[0].strip() not in keys]
    lines += [f"orchestrator_url = {','.join(urls)}\n", f"retry_for = {PLUGIN_RETRY_FOR}\n"]
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(lines)
    try:
        yield
    finally:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(original)
