"""Fixtures for tests against the real Slurm mini-cluster (deploy/devcluster up) and real
server processes.

The session-wide ones (``wfm_config``, ``slurm_cluster``, ``orchestrator``) are in
tests/conftest.py; the mini-cluster's helpers in minicluster.py, the raw server's in
raw_server.py.
"""

from __future__ import annotations

import http.server
import threading
import uuid
from collections.abc import Callable

import pytest

from tests.poll import poll_until
from wfm_orchestrator.slurm import JobSpec, SlurmClient

from .dashboard_page import CannedHandler, canned_overview
from .minicluster import user_token as make_token
from .raw_server import start_server, stop_server


@pytest.fixture
def client(slurm_cluster):
    """A SlurmClient on the mini-cluster's slurmrestd (closed after the test)."""
    c = SlurmClient.from_config(slurm_cluster)
    yield c
    c.close()


@pytest.fixture
def user_token() -> Callable[..., str]:
    """user_token(user, lifespan=3600): a Slurm JWT for ``user``."""
    return make_token


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def job_factory(client):
    """submit(spec, user, user_token=None) -> job id; cancels what it submitted at the end."""
    submitted: list[int] = []

    def submit(spec: JobSpec, user: str = "alice", user_token: str | None = None) -> int:
        job_id = client.submit(spec, user=user, user_token=user_token)
        submitted.append(job_id)
        return job_id

    yield submit
    for job_id in submitted:
        try:
            client.cancel(job_id, signal="SIGKILL")
        except Exception as e:  # noqa: BLE001 - cleanup must go on
            print(f"cleanup: cancel {job_id}: {e}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real ``wfm-orchestrator serve`` (auth = none, no Slurm) on a free loopback port,
    for the raw-HTTP tests of a module."""
    s = start_server(tmp_path_factory.mktemp("raw-http"))
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def sbb(orchestrator):
    """An SBB service of alice, ALLOCATED; released at the end."""
    name = f"alice_sbb_{uuid.uuid4().hex[:8]}"
    body = {"name": name, "user": "alice", "user_slurm_token": make_token("alice"),
            "type": "SBB", "attributes": {"flavor": "small", "targets": ["/nonexistent/*"]}}
    code, answer = orchestrator.post("/ephemeralservice/reserve", body)
    assert code == 200, answer
    seen: list[object] = [None]

    def allocated() -> bool:
        seen[0] = orchestrator.get(f"/ephemeralservice/status/{name}")[1]
        return seen[0]["status"] == "ALLOCATED"

    poll_until(allocated, f"service {name} ALLOCATED", 120, interval=0.5,
               last=lambda: f"{seen[0]}\n{orchestrator.log()[-3000:]}")
    yield name
    orchestrator.delete(f"/ephemeralservice/release/{name}")


@pytest.fixture
def canned():
    """A loopback server of the package's page and assets with a canned /ui/overview."""
    handler = type("Handler", (CannedHandler,), {"overview": canned_overview()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}/ui"
    server.shutdown()
    thread.join(5)


@pytest.fixture
def admin_server(tmp_path):
    """A real ``serve`` (auth = none, no Slurm) of the test's own, which the test may stop
    (``stop_server``); its wfm.conf is tmp_path/wfm.conf."""
    s = start_server(tmp_path)
    yield s
    stop_server(s)
