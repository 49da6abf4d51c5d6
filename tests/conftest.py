"""Shared fixtures: configurations and an in-process application on a real SQLite store."""

from __future__ import annotations

import os

import pytest

import wfm_orchestrator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def server_env(**extra: str) -> dict[str, str]:
    """Environment for a server subprocess that imports the package this test run imported.

    CI tests the *installed* package (its compiled allocator lives in
    site-packages, not in src/); a developer may run from src/ with the
    allocator built in place. Either way, the child finds the same package.
    """
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(wfm_orchestrator.__file__)))
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": package_dir + (os.pathsep + path if path else ""),
            "PYTHONUNBUFFERED": "1", **extra}

# A small cluster for unit tests: two locations, four datanodes.
SMALL_CONF = """
listen = 127.0.0.1:8080
auth = none
state_db = {state_db}
slurmrestd_url =
queue_policy = {queue_policy}
Location=loc1 ComputeNodes=cn[1-2] Datanodes=dn[1-2] NeighborLocation=loc2
Location=loc2 ComputeNodes=cn[3-4] Datanodes=dn[3-4] NeighborLocation=loc1
Datanode=dn[1-4] Cores=8 MemorySize=16GB StorageSize=1TB
Flavor=small  MemorySize=5GB  Cores=2
Flavor=medium MemorySize=10GB Cores=4 StorageSize=500GB
Flavor=large  MemorySize=16GB Cores=8 StorageSize=1TB
"""


@pytest.fixture
def make_config(tmp_path):
    from wfm_orchestrator.config import parse_config

    def make(text: str = SMALL_CONF, **fmt):
        fmt.setdefault("state_db", str(tmp_path / "state.db"))
        fmt.setdefault("queue_policy", "fifo")
        path = tmp_path / "wfm.conf"
        body = text.format(**fmt)
        path.write_text(body)
        return parse_config(body, str(path))

    return make


@pytest.fixture
def app_factory(make_config):
    """Build (client, rm, store) on a fresh or existing state database; closes them after."""
    from falcon import testing

    from wfm_orchestrator.cli import build

    opened = []

    def make(**fmt):
        config = make_config(**fmt)
        app, rm, services, store = build(config)
        opened.append(store)
        client = testing.TestClient(app)
        client.services = services
        return client, rm, store

    yield make
    for store in opened:
        try:
            store.close()
        except Exception:  # noqa: S110 - closing twice in a restart test is fine
            pass


@pytest.fixture
def client(app_factory):
    c, _, _ = app_factory()
    return c


# The mini-cluster fixtures are registered here, once for the whole session: a
# session-scoped fixture imported into several modules is several fixtures, and
# the second orchestrator would wait for the first one's port lock (a hang).
from tests.integration.conftest import slurm_cluster, wfm_config  # noqa: E402, F401
from tests.integration.orchestrator import orchestrator  # noqa: E402, F401
