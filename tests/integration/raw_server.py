"""A real ``wfm-orchestrator serve`` process without Slurm (auth = none, SMALL_CONF) on a
free loopback port: the raw-HTTP tests' server."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass

import pytest

from tests.conftest import SMALL_CONF, server_env
from tests.poll import poll, poll_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log_path: str

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()

    def logged(self, path: str, timeout: float = 5.0) -> bool:
        """True once the access log has a line for ``path`` (polled until ``timeout``).

        False is an answer, not a failure: the tests assert that a smuggled request is
        *not* logged within a short time.
        """
        pattern = re.compile(rf" {re.escape(path)} \d{{3}} ")
        return bool(poll(lambda: pattern.search(self.log()), timeout, interval=0.05))


def start_server(tmp_path, fast_path: str = "on") -> Server:
    port = free_port()
    conf = SMALL_CONF.format(state_db=tmp_path / "state.db", queue_policy="fifo")
    conf = conf.replace("listen = 127.0.0.1:8080",
                        f"listen = 127.0.0.1:{port}\nfast_path = {fast_path}")
    (tmp_path / "wfm.conf").write_text(conf)
    log_path = str(tmp_path / "server.log")
    env = server_env()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wfm_orchestrator.cli", "serve", "--config",
             str(tmp_path / "wfm.conf")],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path))
    server = Server(proc, port, log_path)

    def listening() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode} before listening:\n{server.log()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return False
        return True

    try:
        poll_until(listening, f"server listening on 127.0.0.1:{port}", 20, interval=0.05,
                   last=server.log)
    except AssertionError:
        proc.kill()
        raise
    return server


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(10)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(5)
