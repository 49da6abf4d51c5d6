"""Fixtures of the unit tests (the shared ones, on a real SQLite store, are in tests/conftest.py).

Fixtures live in conftest.py files only (test_suite_rules.py checks it): a test module
that needs one declares it as a parameter and finds it here.
"""

from __future__ import annotations

import json
import os
import threading

import pytest

from wfm_orchestrator.allocator import _compiled, reference
from wfm_orchestrator.auth import TokenVerifier

from ..conftest import SMALL_CONF
from ..jwks_fixture import AUDIENCE, REALM, JWKSServer, TokenFactory, keys

# The accounts the unit tests know (accounts.py refuses any other user): the tests reserve
# and launch as these on any machine, whatever its /etc/passwd holds. The system accounts
# are there so that the refusals can be tested on the same table.
ACCOUNTS = {"alice": 1001, "bob": 1002, "carol": 1003, "root": 0, "slurm": 64030,
            "daemon": 1, "nobody": 65534}


@pytest.fixture(autouse=True)
def account_table(monkeypatch):
    """Every Accounts built without a lookup (ResourceManager, StepManager) reads ACCOUNTS
    instead of pwd. Its own tests (test_accounts.py) pass the real lookup explicitly."""
    from wfm_orchestrator import accounts

    monkeypatch.setattr(accounts, "passwd_uid", ACCOUNTS.get)
    return ACCOUNTS


# The allocator's two implementations, driven by the same rules (test_allocator.py).
ALLOCATORS = {"compiled": _compiled.Allocator, "reference": reference.Allocator}


@pytest.fixture(params=sorted(ALLOCATORS))
def Allocator(request):  # noqa: N802 - stands for the class under test
    """Each allocator class in turn: the compiled one and the pure-Python reference."""
    return ALLOCATORS[request.param]


@pytest.fixture(params=["avx2", "plain"])
def scan(request):
    """Both block scans of the C index: AVX2 (skipped without it) and the plain loop."""
    if request.param == "avx2" and not _compiled._use_avx2(True):
        pytest.skip("this CPU has no AVX2")
    if request.param == "plain":
        _compiled._use_avx2(False)
    yield request.param
    _compiled._use_avx2(True)


# The accounts of the Schemathesis run (test_openapi.py): every user name the document
# allows is an ordinary account there; it excludes these three by name.
SCHEMA_ACCOUNTS = {"root": 0, "nobody": 65534, "slurm": 64030}


@pytest.fixture
def web_schema(app_factory, monkeypatch, account_table):
    """The served OpenAPI document as a Schemathesis schema over the in-process application,
    whose account table holds every user name the document allows."""
    import schemathesis

    from wfm_orchestrator import accounts

    monkeypatch.setattr(accounts, "passwd_uid", lambda name: SCHEMA_ACCOUNTS.get(name, 5000))
    client, _, _ = app_factory()
    return schemathesis.openapi.from_wsgi("/openapi.json", client.app)


# --- a stand-in Keycloak (tests/jwks_fixture.py): test_auth.py, test_authorization.py ---

@pytest.fixture
def jwks_server():
    """A running stand-in Keycloak publishing the RSA and EC test keys."""
    server = JWKSServer()
    server.add(*keys())
    yield server
    server.stop()


@pytest.fixture
def tokens(jwks_server) -> TokenFactory:
    return TokenFactory(jwks_server.issuer)


@pytest.fixture
def verifier(jwks_server):
    return TokenVerifier(jwks_server.base_url, REALM, AUDIENCE)


# The callers of the authorization matrix (test_authorization.py).
CALLERS = {
    # name: (preferred_username, realm roles)
    "owner": ("alice", []),
    "other": ("bob", []),
    "norole": ("carol", ["offline_access"]),
    "sm": ("session-manager-svc", ["session-manager"]),
    "bb": ("slurm-plugin", ["burst-buffer"]),
    "dm": ("datamover-svc", ["datamover"]),
    "mx": ("prometheus", ["metrics"]),
    "admin": ("root-admin", ["admin"]),
}


def keycloak_conf(conf: str, server: JWKSServer) -> str:
    """``conf`` (auth = none) with auth = keycloak against the stand-in realm."""
    return conf.replace("auth = none", f"auth = keycloak\nkeycloak_server = "
                        f"{server.base_url}\nkeycloak_realm = {REALM}\n"
                        f"keycloak_audience = {AUDIENCE}")


def caller_tokens(server: JWKSServer) -> dict[str, str]:
    """A token signed by the realm's RSA key for each of CALLERS."""
    factory = TokenFactory(server.issuer)
    rsa, _ = keys()
    return {name: factory.make(rsa, preferred_username=user, realm_access={"roles": roles})
            for name, (user, roles) in CALLERS.items()}


@pytest.fixture
def secured(make_config, jwks_server):
    """An application with auth = keycloak against the stand-in realm, and a token per caller."""
    from falcon import testing

    from wfm_orchestrator.cli import build

    app, _, _, store = build(make_config(keycloak_conf(SMALL_CONF, jwks_server)))
    yield testing.TestClient(app), caller_tokens(jwks_server)
    store.close()


# --- test_datamover.py ---

@pytest.fixture
def tiers(tmp_path):
    """(source, target, outside) tier roots; outside holds a file no operation may reach."""
    src, dst, outside = tmp_path / "hdd", tmp_path / "nvme", tmp_path / "outside"
    for d in (src, dst, outside):
        d.mkdir()
    (outside / "secret").write_text("SECRET")
    return src, dst, outside


@pytest.fixture
def user_tiers(tiers):
    """(source, target, outside): the running user's directories of the two tier roots of
    ``tiers`` (``<root>/<user>/``, 0700, where a user's data lives), and ``outside``."""
    from wfm_orchestrator.datamover import running_user

    src_root, dst_root, outside = tiers
    user = running_user()
    src, dst = src_root / user, dst_root / user
    for d in (src, dst):
        d.mkdir(mode=0o700)
    return src, dst, outside


# --- test_queue_admission.py ---

@pytest.fixture
def backfill(tmp_path):
    """A resource manager with queue_policy = backfill (window 10 s) and its clock."""
    from .test_queue_admission import Clock, manager

    clock = Clock()
    rm = manager(tmp_path, "rm", "backfill", clock)
    yield rm, clock
    rm.store.close()


# --- test_slurm_client.py ---

@pytest.fixture
def token_file(tmp_path):
    """A Slurm JWT for user slurm in a file, as slurm_token_file names it."""
    from .test_slurm_client import jwt

    p = tmp_path / "slurm.jwt"
    p.write_text(jwt("slurm") + "\n")
    return str(p)


# --- test_server_loop.py ---

def stop_served(server, thread: threading.Thread) -> None:
    """Stop a server whose loop runs on ``thread``: its sockets are closed on the loop's
    own thread (closed from here, under its poll(), the loop could fail with "Bad file
    descriptor"), the loop returns once none is left, then the workers stop."""
    from waitress import wasyncore

    server.mailbox.post(lambda: wasyncore.close_all(server._map))
    thread.join(5)
    assert not thread.is_alive(), "the loop did not return once its sockets were closed"
    server.task_dispatcher.shutdown()


@pytest.fixture()
def served():
    """tests/unit/loop_app.py on a real server (loop thread "loop", two workers):
    (port, commit, keys, slow)."""
    from wfm_orchestrator.http.server import create_server

    from .loop_app import NONBLOCKING, loop_app

    app, commit, keys, slow = loop_app()
    server = create_server(app, "127.0.0.1", 0, threads=2,
                           nonblocking=lambda method, path: path in NONBLOCKING)
    thread = threading.Thread(target=server.run, name="loop", daemon=True)
    thread.start()
    yield server.effective_port, commit, keys, slow
    slow.release.set()
    for ticket in commit.tickets:
        if not ticket._finished:
            ticket._finish()
    stop_served(server, thread)


# Whatever the script would call to act: privileges, mounts, chroot, packages,
# and the commands a caller tries to smuggle in.
STUBBED = ["id", "chroot", "setpriv", "mount", "umount", "debootstrap", "apt-get", "su",
           "sudo", "env", "touch", "rm", "sbatch", "squeue", "scontrol", "useradd"]


@pytest.fixture
def stubs(tmp_path):
    """A PATH whose first directory holds recording stand-ins for STUBBED."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for name in STUBBED:
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >>"{calls}"\n')
        stub.chmod(0o755)
    path = f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    return path, calls, tmp_path


# --- test_step_retention.py ---


@pytest.fixture
def stepped(env):
    """(config, make, manager, slurm, services, clock): a step manager on a fake Slurm, fake
    services and a clock the test moves (``make`` restarts it on the same database)."""
    from ..fake_slurm import FakeServices, FakeSlurm
    from ..jwks_fixture import FakeClock

    config, make = env
    slurm, services = FakeSlurm(cancel_ends_jobs=True), FakeServices()
    m = make(slurm, services)
    m.clock = FakeClock(1_000_000.0)
    return config, make, m, slurm, services, m.clock


# --- test_session_manager_jobs.py ---


@pytest.fixture
def http(world):
    """The status and release resources on the ``world`` (auth none: the administrator),
    for test_session_manager_jobs.py."""
    import falcon
    from falcon import testing

    from wfm_orchestrator.api.errors import install
    from wfm_orchestrator.api.service_status import AllServiceStatus, Release, ServiceStatus
    from wfm_orchestrator.binding import Binding

    app = falcon.App()
    install(app)
    b = Binding(world.rm, world.sm, world.rm.accounts)
    app.add_route("/status", AllServiceStatus(world.sm, b))
    app.add_route("/status/{ident}", ServiceStatus(world.sm, b))
    app.add_route("/release/{service_name}", Release(world.sm, b))
    return testing.TestClient(app)


# --- a stand-in orchestrator for the admin command line (test_admin.py) ------------------


class _Answering:
    """A loopback HTTP server answering every request with ``status`` and a JSON body;
    counts the requests it got."""

    def __init__(self, status: int, body: dict):
        import http.server
        import threading

        outer = self
        self.hits = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                outer.hits += 1
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def answering():
    made: list[_Answering] = []

    def make(status: int, body: dict) -> _Answering:
        made.append(_Answering(status, body))
        return made[-1]

    yield make
    for server in made:
        server.close()


@pytest.fixture
def wsgi_served():
    """Serve a real WSGI application on loopback (test_admin.py's `leads`): its URL."""
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    servers = []

    def serve(app) -> str:
        server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


# --- the leader lease (tests/unit/test_lease.py) ------------------------------------


@pytest.fixture
def leases(pg_state_db):
    """Make Lease(url, ttl, clock) objects on the test's PostgreSQL schema, set up and
    closed after the test."""
    from wfm_orchestrator.lease import Lease

    made = []

    def make(url: str = "http://a:1", ttl: float = 30, clock=None, **more) -> Lease:
        lease = Lease(pg_state_db, url, ttl, **({"clock": clock} if clock else {}), **more)
        lease.setup()
        made.append(lease)
        return lease

    yield make
    for lease in made:
        lease.close()
