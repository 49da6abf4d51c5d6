"""`serve` on PostgreSQL with two instances (cli.py, takeover.py): one leads, the other
answers 503 with the leader's URL; a clean stop of the leader hands the lease over at
once and the standby serves what the leader stored, through the same listener. Server
processes on the session's cluster (``pg_state_db``): here, not among the unit tests."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.poll import poll_until

from ..conftest import SBB, SMALL_CONF, server_env

pytestmark = pytest.mark.ha


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str, method: str = "GET", body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,  # noqa: S310
                                 method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 - loopback
            return r.status, r.headers, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.load(e)
    except OSError:
        return 0, {}, None


def role(port: int) -> str | None:
    status, _, doc = get(port, "/v1.0.0/leader")
    return doc["role"] if status == 200 else None


def leads(port: int) -> int:
    """The exit code of the virtual IP's health check (`wfm-orchestrator leads`)."""
    return subprocess.run(  # noqa: S603 - argv list
        [sys.executable, "-m", "wfm_orchestrator.cli", "leads", "--quiet",
         "--url", f"http://127.0.0.1:{port}"], env=server_env(), capture_output=True,
        timeout=30, check=False).returncode


def test_a_standby_serves_503_then_takes_over_a_clean_stop(pg_state_db, tmp_path):
    ports = [free_port(), free_port()]
    procs = []
    try:
        for i, port in enumerate(ports):
            conf = tmp_path / f"wfm{i}.conf"
            conf.write_text(SMALL_CONF.format(state_db=pg_state_db, queue_policy="fifo")
                            .replace("127.0.0.1:8080", f"127.0.0.1:{port}")
                            + "lease_ttl = 6\n")
            procs.append(subprocess.Popen(  # noqa: S603 - argv list
                [sys.executable, "-m", "wfm_orchestrator.cli", "serve", "--config", str(conf)],
                env=server_env(WFM_NODE_NAME=f"node{i}"), stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
            poll_until(lambda port=port: role(port), what=f"instance {i} answers")
        assert [role(p) for p in ports] == ["leader", "standby"]
        assert [leads(p) for p in ports] == [0, 1]  # the virtual IP's check (docs/ha.md)
        status, headers, doc = get(ports[1], "/v1.0.0/ephemeralservice/reserve", "POST",
                                   dict(SBB))
        assert status == 503 and doc["leader"] == f"http://127.0.0.1:{ports[0]}"
        assert headers.get("X-WFM-Leader") == doc["leader"]  # any case
        status, _, doc = get(ports[0], "/v1.0.0/ephemeralservice/reserve", "POST", dict(SBB))
        assert status == 200, doc
        procs[0].send_signal(signal.SIGTERM)
        assert procs[0].wait(timeout=30) == 0
        # Released at the stop: the standby leads at its next poll, not after the ttl.
        poll_until(lambda: role(ports[1]) == "leader", what="the standby leads", timeout=20)
        status, _, doc = get(ports[1], f"/admin/reservations/{SBB['name']}")
        assert status == 200 and doc["state"] == "FREE"
        _, _, doc = get(ports[1], "/v1.0.0/leader")
        assert doc == {"role": "leader", "leader": f"http://127.0.0.1:{ports[1]}", "epoch": 2}
        assert [leads(p) for p in ports] == [4, 0]  # stopped: no answer; the new leader
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
