"""A real orchestrator process on 127.0.0.1:8080, shared by the end-to-end tests.

The ``orchestrator`` fixture (session scope) is defined once for the whole session in
tests/conftest.py (a session fixture imported into several modules would be several
fixtures, and the second one would wait for the first one's port lock: a hang); it
holds ``session_orchestrator()`` below open.

``session_orchestrator()`` runs ``python3 -m wfm_orchestrator.cli serve``
from this checkout with a copy of the repository's ``wfm.conf`` whose
``state_db`` is a temporary file or an empty PostgreSQL schema of the local HA cluster
(tests/conftest.py's ``integration_engine``; relative paths made absolute),
waits until it answers, and stops it with SIGTERM at the end of the session.
It must listen on 127.0.0.1:8080 because that is the ``orchestrator_url`` of
the burst-buffer plugin installed in the mini-cluster: a step job's
``wfm_use`` directive is checked against this very process.

Two pytest sessions (two engineers) cannot both own port 8080: it takes an
exclusive lock (``/tmp/wfm-test-orchestrator-8080.lock``) for the session,
waiting up to ``WFM_TEST_LOCK_WAIT`` seconds (default 600) for the other
session to finish. If the port is still held by a process that is not a test
session (e.g. ``deploy/run-dev``), it fails and names it rather than stop
someone else's process.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import ujson

from tests.poll import poll_until

from ..conftest import server_env
from .minicluster import REPO, WFM_CONF

HOST, PORT = "127.0.0.1", 8080
URL = f"http://{HOST}:{PORT}"
# Shared by every test session on the machine, whoever runs it: a fixed path on purpose.
LOCK_PATH = f"/tmp/wfm-test-orchestrator-{PORT}.lock"  # noqa: S108


@dataclass
class Orchestrator:
    """The running process and a tiny JSON client for it."""

    proc: subprocess.Popen
    url: str
    config_path: str
    state_db: str
    log_path: str

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()

    def request(self, method: str, path: str, body: object = None,
                timeout: float = 30.0, prefix: str = "/v1.0.0") -> tuple[int, object]:
        """(status, decoded JSON body or text) of ``method <prefix><path>`` (prefix "" for
        the administrator's /admin/...)."""
        data = None if body is None else ujson.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 - always http://127.0.0.1:8080
            f"{self.url}{prefix}{path}", data=data, method=method,
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, ujson.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode("utf-8", "replace")

    def get(self, path: str) -> tuple[int, object]:
        return self.request("GET", path)

    def post(self, path: str, body: object) -> tuple[int, object]:
        return self.request("POST", path, body)

    def delete(self, path: str) -> tuple[int, object]:
        return self.request("DELETE", path)


def _port_holder(port: int) -> str:
    """Who listens on ``port`` (ss output), for the failure message."""
    try:
        out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown process"
    pids = re.findall(r"pid=(\d+)", out)
    described = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = "?"
        described.append(f"pid {pid}: {cmd}")
    return "; ".join(described) or out or "unknown process"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


MOVER = os.path.join(REPO, "src", "wfm_orchestrator", "datamover.py")
# Settings of the session orchestrator beyond wfm.conf's: Slurm's node states followed at
# every cycle (test_datanode_state.py waits for them).
SESSION_SETTINGS = "node_poll_interval = 1\n"


def write_config(directory: str, port: int = PORT, extra: str = "",
                 state_db: str | None = None) -> tuple[str, str]:
    """A copy of wfm.conf with a fresh state_db and absolute paths: (path, state_db).

    ``port``: its listener's; ``extra``: settings appended (a dedicated orchestrator);
    ``state_db``: an empty PostgreSQL schema's URL, or None for an SQLite file."""
    # A directory of its own, which the orchestrator creates 0700: ``directory`` is open
    # to the cluster's users, and an open directory beside wfm.conf is refused
    # (docs/security.md §9).
    state_db = state_db or os.path.join(directory, "state", "state.db")
    lines = []
    with open(WFM_CONF, encoding="utf-8") as fh:
        for line in fh:
            key = line.split("=", 1)[0].strip()
            if key == "listen":
                line = f"listen = {HOST}:{port}\n"
            elif key == "state_db":
                line = f"state_db = {state_db}\n"
            elif key == "slurm_token_file":
                value = line.split("=", 1)[1].strip()
                line = f"slurm_token_file = {os.path.join(REPO, value)}\n"
            elif key == "datamover_command":
                # The mover of this tree, not whichever copy deploy/install last put in
                # /usr/local/bin: the tests check the code they run with. A copy beside the
                # configuration, in /tmp, which the 24.11 tree shares (the checkout may be
                # anywhere); Debian's python3 of each tree; -I keeps the script's directory
                # off sys.path.
                mover = os.path.join(directory, "datamover.py")
                shutil.copyfile(MOVER, mover)
                os.chmod(mover, 0o644)
                line = f"datamover_command = /usr/bin/python3 -I {mover}\n"
            lines.append(line)
    path = os.path.join(directory, "wfm.conf")
    with open(path, "w", encoding="utf-8") as fh:
        if "://" in state_db:
            os.fchmod(fh.fileno(), 0o600)  # the URL holds the HA cluster's password
        fh.writelines(lines)
        fh.write(extra)
    return path, state_db


def start(directory: str, timeout: float = 30.0, port: int = PORT,
          extra: str = "", state_db: str | None = None) -> Orchestrator:
    """An orchestrator of this tree on ``port`` (8080: the plugin's) with ``extra``
    settings (and ``state_db``, write_config's); it answers when this returns."""
    url = f"http://{HOST}:{port}"
    config_path, state_db = write_config(directory, port, extra, state_db)
    log_path = os.path.join(directory, "orchestrator.log")
    env = server_env()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wfm_orchestrator.cli", "serve", "--config", config_path],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Orchestrator(proc, url, config_path, state_db, log_path)

    def answers() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"the orchestrator exited with {proc.returncode}:\n{server.log()}")
        try:
            return server.get("/location/list")[0] == 200
        except OSError:
            return False

    try:
        poll_until(answers, f"the orchestrator answers on {url}", timeout, last=server.log)
    except AssertionError:
        stop(server)
        raise
    return server


def stop(server: Orchestrator, timeout: float = 30.0) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(10)


@contextmanager
def reloaded_with(server: Orchestrator, key: str, value: str,
                  timeout: float = 30.0) -> Iterator[None]:
    """Run ``server`` with setting ``key = value`` (one of config.RELOADABLE) for as long as
    the ``with`` lasts: written into its wfm.conf and reloaded (SIGHUP, as an administrator
    would), then put back and reloaded again. A restart meanwhile keeps it (same file)."""
    with open(server.config_path, encoding="utf-8") as fh:
        original = fh.read()

    def reload(text: str, was: str) -> None:
        with open(server.config_path, "w", encoding="utf-8") as fh:
            fh.write(text)
        said = len(re.findall(rf"reload: {key} = ", server.log()))
        server.proc.send_signal(signal.SIGHUP)
        poll_until(lambda: len(re.findall(rf"reload: {key} = ", server.log())) > said,
                   f"the orchestrator reloads {key} ({was})", timeout,
                   last=lambda: server.log()[-2000:])

    kept = [line for line in original.splitlines(keepends=True)
            if line.split("=", 1)[0].strip() != key]
    reload("".join(kept) + f"{key} = {value}\n", f"to {value}")
    try:
        yield
    finally:
        if server.proc.poll() is None:
            reload(original, "back")
        else:
            with open(server.config_path, "w", encoding="utf-8") as fh:
                fh.write(original)


def _locked(lock) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def session_orchestrator(state_db: str | None = None) -> Iterator[Orchestrator]:
    """A real orchestrator on 127.0.0.1:8080 with a temporary state database (``state_db``:
    an empty PostgreSQL schema's URL, None: an SQLite file), for as long as the ``with``
    lasts (the session), under the port's lock."""
    lock = open(LOCK_PATH, "a+")  # noqa: SIM115 - held for the whole session
    wait = float(os.environ.get("WFM_TEST_LOCK_WAIT", "600"))
    try:
        poll_until(lambda: _locked(lock), f"take {LOCK_PATH} (another test session holds it)",
                   wait, interval=1)
    except AssertionError:
        lock.close()
        raise
    try:
        poll_until(lambda: _port_free(PORT), f"{HOST}:{PORT} free", 15, interval=0.5,
                   last=lambda: (f"held by {_port_holder(PORT)}; the end-to-end tests need "
                                 "that port (the burst-buffer plugin's orchestrator_url). "
                                 "Stop that orchestrator first."))
        directory = tempfile.mkdtemp(prefix="wfm-e2e-")
        os.chmod(directory, 0o755)  # noqa: S103 - as before: readable by the cluster's users
        server = start(directory, extra=SESSION_SETTINGS, state_db=state_db)
        try:
            yield server
        finally:
            stop(server)
            if os.environ.get("WFM_TEST_KEEP"):
                print(f"orchestrator state and log kept in {directory}")
            else:
                shutil.rmtree(directory, ignore_errors=True)
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
