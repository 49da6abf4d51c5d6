"""Fixtures of the reliability suites.

The mini-cluster's session fixtures (``slurm_cluster``, ``orchestrator``) are in
tests/conftest.py; ``client`` (a SlurmClient, function scope) is tests/integration's,
registered here too.
"""

import os

import pytest

from tests.integration.conftest import client  # noqa: F401 - registered for this directory
from tests.integration.minicluster import user_token
from tests.integration.orchestrator import reloaded_with

from .cluster import (
    clean_up,
    launch,
    release,
    reserve_body,
    unique,
    wait_all_free,
    wait_answering,
    wait_status,
)
from .harness import Http, Orchestrator, free_port, gbf, integrity, small_config


@pytest.fixture
def created(orchestrator, client):  # noqa: F811 - the fixture imported above
    """Services and steps a mini-cluster test creates ({"services": [], "steps": []}):
    released / aborted at the end even if the test failed, their jobs cancelled."""
    made: dict[str, list[str]] = {"services": [], "steps": []}
    yield made
    done = clean_up(orchestrator, client, made["services"], made["steps"])
    if done:
        print(f"[reliability] clean-up after the test: {'; '.join(done)}")


@pytest.fixture
def stuck_job_timeout(orchestrator):
    """The session orchestrator replaces a service job Slurm keeps PENDING after its
    binding 30 s later (stuck_job_timeout, set by a reload) for the test; put back after.
    30 s: above the 3-18 s a normal job takes from its binding to its start."""
    with reloaded_with(orchestrator, "stuck_job_timeout", "30"):
        yield 30


@pytest.fixture(scope="module")
def service(orchestrator):
    """An SBB service of alice, ALLOCATED, for the steps' data movers; released at the end."""
    name = unique("stepsvc")
    code, answer = orchestrator.post("/ephemeralservice/reserve",
                                     reserve_body(name, user_token("alice")))
    assert code == 200, answer
    wait_status(orchestrator, name, "ALLOCATED")
    yield name
    if orchestrator.proc.poll() is not None:
        launch(orchestrator)
        wait_answering(orchestrator)
    release(orchestrator, name)
    wait_status(orchestrator, name, "STOPPED")
    wait_all_free(orchestrator)


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    """A state database written by a real server: 300 reservations, half deleted."""
    d = tmp_path_factory.mktemp("populated")
    port = free_port()
    server = Orchestrator(small_config(str(d), port), port, str(d / "server.log"))
    server.start()
    http = Http(port)
    try:
        for i in range(300):
            status, answer = http.request("POST", "/v1.0.0/ephemeralservice/reserve",
                                          gbf(f"r{i}", 1, 10))
            assert status == 200, answer
        for i in range(0, 300, 2):
            assert http.request("DELETE", f"/v2.0.0/server/allocation/r{i}")[0] == 200
    finally:
        http.close()
        server.stop()
    db = str(d / "state.db")
    assert integrity(db) == "ok"
    assert not os.path.exists(db + "-wal"), "a clean stop leaves no WAL behind"
    with open(db, "rb") as fh:
        return fh.read()
