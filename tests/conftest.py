"""Shared fixtures: configurations and an in-process application on a real SQLite store."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator

import pytest

import wfm_orchestrator

from .integration.minicluster import (
    WFM_CONF,
    cluster_up,
    restore_slurm,
    use_slurm,
    versions_under_test,
)

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


# --- the state database: SQLite, and PostgreSQL on the local HA cluster -------------


def _engines_under_test() -> list[str]:
    """Both engines, or the one WFM_TEST_STATE_DB names (a quick run without root or
    without the HA cluster: ``WFM_TEST_STATE_DB=sqlite``)."""
    chosen = os.environ.get("WFM_TEST_STATE_DB", "").strip()
    if not chosen:
        return ["sqlite", "postgresql"]
    if chosen not in ("sqlite", "postgresql"):
        raise pytest.UsageError(f"WFM_TEST_STATE_DB={chosen!r}: say sqlite or postgresql")
    return [chosen]


@pytest.fixture(scope="session")
def ha_dsn():
    """The connection string of the local HA cluster (deploy/hacluster): brought up when
    it does not run (and down again at the end of the session), for every test of the
    session. Skipped only when not root (deploy/hacluster runs as root) or without
    psycopg or PostgreSQL's packages (deploy/install installs them)."""
    if "postgresql" not in _engines_under_test():
        pytest.skip("WFM_TEST_STATE_DB=sqlite")
    if os.geteuid() != 0:
        pytest.skip("the PostgreSQL state database runs on deploy/hacluster, as root")
    pytest.importorskip("psycopg", reason="pip install '.[test]' (deploy/install does)")
    if not os.path.exists("/usr/lib/postgresql/15/bin/postgres") or not shutil.which("patroni"):
        pytest.skip("PostgreSQL 15 and Patroni are not installed (deploy/install does)")
    from .ha.cluster import dsn, hacluster, up

    started = hacluster("status", timeout=60).returncode != 0
    if started:
        up()
    yield dsn()
    if started:
        hacluster("down", timeout=180)


@contextlib.contextmanager
def pg_schema(ha_dsn: str) -> Iterator[str]:
    """A ``state_db`` URL of an empty PostgreSQL schema of its own on the HA cluster,
    dropped at the end of the with-block."""
    import psycopg

    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(ha_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield f"{ha_dsn}{'&' if '?' in ha_dsn else '?'}options=-csearch_path%3D{schema}"
    with psycopg.connect(ha_dsn, autocommit=True) as conn:
        # A store a test left open may hold a lock: give up on the schema then, loudly.
        conn.execute("SET lock_timeout = '10s'")
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def pg_state_db(ha_dsn):
    """A ``state_db`` URL of a PostgreSQL schema of its own, dropped after the test (one
    cluster for the session, an empty schema per test)."""
    with pg_schema(ha_dsn) as url:
        yield url


class _PgConnection:
    """The part of sqlite3's connection the tests use (``?`` placeholders, a with-block
    commits), on psycopg: a test reads or alters a PostgreSQL state_db the same way. It
    closes at the end of a with-block: a connection left in a transaction would keep the
    test's schema from being dropped."""

    def __init__(self, dsn: str):
        import psycopg

        self._conn = psycopg.connect(dsn)

    def execute(self, sql: str, params=()):
        return self._conn.execute(sql.replace("?", "%s"), params)

    def commit(self) -> None:
        self._conn.commit()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self._conn.commit()
        self._conn.close()


def connect_db(state_db: str):
    """A connection of the test's own to ``state_db``, SQLite's or PostgreSQL's."""
    if state_db.startswith(("postgresql://", "postgres://")):
        return _PgConnection(state_db)
    import sqlite3

    return sqlite3.connect(state_db)


def sqlite_db_as_before(path: str, migrations: int):
    """An SQLite state database as an orchestrator from before ``schema_migration`` made it
    (the first ``migrations`` migrations, versioned by PRAGMA user_version only): an open
    connection in autocommit, to add the rows of that time."""
    import sqlite3

    from wfm_orchestrator.store import APPLICATION_ID, MIGRATIONS

    conn = sqlite3.connect(path, isolation_level=None)
    for number, migration in enumerate(MIGRATIONS[:migrations], 1):
        conn.execute("BEGIN IMMEDIATE")
        for stmt in migration.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    return conn


@pytest.fixture(params=_engines_under_test())
def state_db(request, tmp_path):
    """The ``state_db`` of every test that makes a configuration (``make_config``) or asks
    for it: an SQLite file, then a PostgreSQL schema (issue #20: the whole suite on both
    engines)."""
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    return request.getfixturevalue("pg_state_db")


@pytest.fixture
def make_config(tmp_path, state_db):
    from wfm_orchestrator.config import parse_config

    def make(text: str = SMALL_CONF, **fmt):
        fmt.setdefault("state_db", state_db)
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


# --- worlds on the fake Slurm (tests/fake_slurm.py) ------------------------------------

SERVICE_CONF = SMALL_CONF.replace("slurmrestd_url =", "slurmrestd_url = http://127.0.0.1:1\n"
                          "slurm_token_file = /dev/null\nteardown_grace = 30\n"
                          "impersonate_users = yes\n"
                          "release_timeout = 100") + \
    'EphemeralService=SBB Command="/usr/local/libexec/wfm/sbb-service --root /x"\n'
SBB = {"name": "alice_s_sbb", "user": "alice", "user_slurm_token": "alice-token", "type": "SBB",
       "attributes": {"flavor": "small", "targets": ["/a/*", "/b/*"]}}
LARGE = {"name": "alice_s_big", "user": "alice", "user_slurm_token": "t", "type": "SBB",
         "attributes": {"flavor": "large", "targets": ["/a/*"]}}


def reserve(client, body):
    """POST reserve through a Falcon TestClient, which must answer 200: its body."""
    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=body)
    assert r.status_code == 200, r.text
    return r.json


@pytest.fixture
def world(make_config, tmp_path):
    """A resource manager + service manager on a real store, with a fake Slurm and clock."""
    from tests.fake_slurm import FakeSlurm
    from tests.jwks_fixture import FakeClock
    from wfm_orchestrator.model import parse_reserve
    from wfm_orchestrator.resource_manager import ResourceManager
    from wfm_orchestrator.services import ServiceManager
    from wfm_orchestrator.store import Store

    stores = []

    class World:
        def __init__(self):
            self.slurm = FakeSlurm()
            self.clock = FakeClock(1_000_000.0)
            self.open()

        def open(self):
            self.config = make_config(SERVICE_CONF)
            self.store = Store(self.config.state_db)
            stores.append(self.store)
            self.rm = ResourceManager(self.config, self.store, clock=self.clock)
            self.sm = ServiceManager(self.config, self.rm, self.store, self.slurm,
                                     clock=self.clock)

        def restart(self):
            self.store.close()
            self.open()

        def reserve(self, body=SBB):
            rec, ticket = self.rm.reserve(parse_reserve(body, self.config))
            ticket.wait()
            return rec

        def release(self, name=SBB["name"]):
            """DELETE ephemeralservice/release, answered once durable (as the API does)."""
            answer, ticket = self.sm.release(name)
            ticket.wait()
            return answer

        def status(self, name=SBB["name"]):
            return self.sm.status(name)

    yield World()
    for store in stores:
        try:
            store.close()
        except Exception:  # noqa: S110 - closed already by a restart
            pass


STEP_CONF = """
listen = 127.0.0.1:8080
auth = none
state_db = {state_db}
slurmrestd_url =
queue_policy = {queue_policy}
compute_partition = compute
impersonate_users = yes
Location=loc1 ComputeNodes=cn[1-2] Datanodes=dn1 NeighborLocation=loc2
Location=loc2 ComputeNodes=cn[3-4] Datanodes=dn2 NeighborLocation=loc1
Datanode=dn[1-2] Cores=8 MemorySize=16GB StorageSize=1TB
Tier=NVMe Root=/tiers/nvme
Tier=HDD Root=/tiers/hdd
"""
STEP_BODY = {
    "name": "alice_s1_step_0", "user": "alice", "location": ["loc1"],
    "command_env": "IN=data", "command": "sbatch -n 2 job.sh $IN",
    "services": [{"name": "alice_s1_sbb", "hint": "RO", "datamovers": [
        {"name": "in1", "trigger": "step_start", "target": "NVMe", "operation": "copy",
         "elements": ["HDD:data/*.h5"]},
        {"name": "in2", "trigger": "step_start", "target": "NVMe", "operation": "copy",
         "elements": ["ref/*"]},
        {"name": "out", "trigger": "step_stop", "target": "HDD", "operation": "move",
         "elements": ["NVMe:results/**"]},
    ]}],
}


@pytest.fixture
def env(make_config, tmp_path):
    """(config, make): make(slurm, services) builds a step manager on the same state
    database (a restart when called again), with a fake Slurm and fake services."""
    from tests.fake_slurm import FakeServices, FakeSlurm
    from wfm_orchestrator.steps import StepManager
    from wfm_orchestrator.store import Store

    config = make_config(STEP_CONF)
    stores = []

    def make(slurm=None, services=None):
        store = Store(config.state_db)
        stores.append(store)
        return StepManager(config, store, services or FakeServices(),
                           slurm or FakeSlurm(cancel_ends_jobs=True),
                           home=lambda u: f"/home/{u}")

    yield config, make
    for s in stores:
        try:
            s.close()
        except OSError:
            pass  # closed by the test (a restart)



def pytest_collection_modifyitems(items):
    """``integration`` means "needs the Slurm mini-cluster": every test that uses the
    slurm_cluster fixture (directly or through another fixture) gets it, so that
    ``-m "not integration"`` never selects a test that needs Slurm."""
    mark_slurm_users(items)


def mark_slurm_users(items) -> None:
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


# The mini-cluster's session fixtures are defined here, once for the whole session, for
# tests/integration and tests/reliability alike: a session-scoped fixture imported into
# several modules is several fixtures, and the second orchestrator would wait for the first
# one's port lock (a hang).


@pytest.fixture(scope="session")
def wfm_config():
    """The repository's wfm.conf (the mini-cluster's configuration)."""
    from wfm_orchestrator.config import load_config

    return load_config(WFM_CONF)


# The crash and fault suites drive the daemons of the default Slurm (kill, restart with
# `deploy/devcluster up`): issue #16 asks for the integration and security suites on every
# version, and these run on 22.05 only.
DEFAULT_SLURM_ONLY = (os.path.join(ROOT, "tests", "reliability") + os.sep,)


def pytest_generate_tests(metafunc):
    """Every test that needs the mini-cluster runs once per Slurm version under test
    (``slurm_version``, session scope: pytest groups them, so the cluster switches once)."""
    if "slurm_version" in metafunc.fixturenames:
        path = str(metafunc.definition.path)
        versions = (["22.05"] if path.startswith(DEFAULT_SLURM_ONLY)
                    else list(versions_under_test()))
        metafunc.parametrize("slurm_version", versions, indirect=True, scope="session")


def pytest_sessionfinish(session, exitstatus):
    """A developer's mini-cluster is left on the version it ran before the tests."""
    restore_slurm()


@pytest.fixture(scope="session")
def slurm_version(request) -> str:
    """The Slurm version this test runs on (pytest_generate_tests above)."""
    return request.param


@pytest.fixture(scope="session")
def slurm_cluster(wfm_config, slurm_version):
    """The mini-cluster runs ``slurm_version`` and is UP, else the test is skipped.

    Tests skip only when the mini-cluster is truly absent (no version runs: nothing to
    switch from); anything else wrong with it is a failure. A test of another version than
    the running one switches the cluster (deploy/devcluster up --slurm V). Every test using
    it is marked ``integration`` (pytest_collection_modifyitems above).
    """
    up, reason = cluster_up()
    if not up:
        pytest.skip(f"no Slurm mini-cluster: {reason}")
    use_slurm(slurm_version)
    up, reason = cluster_up()
    assert up, f"Slurm {slurm_version} mini-cluster not UP after the switch: {reason}"
    assert wfm_config.slurmrestd_url, "wfm.conf has no slurmrestd_url"
    assert os.path.exists(wfm_config.slurm_token_file), (
        f"the mini-cluster is up but {wfm_config.slurm_token_file} is missing: "
        "run deploy/devcluster up")
    return wfm_config


def integration_engine(slurm_version: str) -> str:
    """The state database of the session's orchestrator on ``slurm_version``: the suite on
    both engines at no extra cost, one per Slurm version (PostgreSQL on 22.05, SQLite on
    24.11, the version CI brings the mini-cluster up on), unless WFM_TEST_STATE_DB names
    one."""
    engines = _engines_under_test()
    if len(engines) == 1:
        return engines[0]
    return "postgresql" if slurm_version == "22.05" else "sqlite"


@pytest.fixture(scope="session")
def orchestrator(request, slurm_cluster, slurm_version):
    """A real orchestrator on 127.0.0.1:8080 (the burst-buffer plugin's orchestrator_url)
    with a temporary state database (integration_engine's); see
    tests/integration/orchestrator.py."""
    # Imported here: orchestrator.py imports server_env from this module.
    from .integration.orchestrator import session_orchestrator

    with contextlib.ExitStack() as stack:
        state_db = None
        if integration_engine(slurm_version) == "postgresql":
            state_db = stack.enter_context(pg_schema(request.getfixturevalue("ha_dsn")))
        yield stack.enter_context(session_orchestrator(state_db))
