"""The security suite's fixtures and helpers: alice attacks bob on the mini-cluster.

One test per row of docs/security.md §13 ("Threat model"). The victim is bob, the
attacker alice, both ordinary accounts of the mini-cluster. Every test stages its
attack as really as the row allows (real ``sbatch`` as alice, real HTTP to real
``serve`` processes, real files written as alice, real restarts) and checks two
things: the attack fails with a reason that names the field or rule, and bob's
things (his reservation, his service's job, his files) are what they were.

Helpers here are plain functions (importable by the modules: ``from .conftest import
sbatch``) and, for the stateful ones, fixtures that clean up after themselves. They
are meant for the plugin rows too (a job of alice naming bob's reservation in
``#BB_LUA``): ``sbatch`` (returns the job id or sbatch's refusal), ``job_info`` (state
and reason from ``scontrol show job -o``), ``wait_job``, ``reserve``/``wait_status``,
``bob_service`` and ``bob_things`` (the snapshot to compare).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from tests.conftest import SMALL_CONF, connect_db, server_env
from tests.integration.minicluster import DEVCLUSTER, REPO, user_token
from tests.integration.raw_server import free_port
from tests.poll import poll_until

ALICE, BOB = "alice", "bob"
NVME = "/var/tmp/wfm-tiers/nvme"  # noqa: S108 - the mini-cluster's tier roots (wfm.conf)
HDD = "/var/tmp/wfm-tiers/hdd"  # noqa: S108
TIERS = (NVME, HDD, "/var/tmp/wfm-tiers/ssd")  # noqa: S108
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
         "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
STEP_FINAL = ENDED


def unique(prefix: str, user: str = BOB) -> str:
    """A service or step name of ``user`` (names start with the user, as the SM's do)."""
    return f"{user}_{prefix}_{uuid.uuid4().hex[:8]}"


# --- as a user: commands, files ------------------------------------------------------


def run_as(user: str, *argv: str, timeout: float = 30, stdin: str | None = None
           ) -> subprocess.CompletedProcess:
    """``argv`` run as ``user`` (runuser: real uid, gid and groups of that account)."""
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True,
                          text=True, timeout=timeout, input=stdin, cwd="/")


def read_as(user: str, path: str) -> subprocess.CompletedProcess:
    """``cat path`` as ``user``: returncode 0 and the bytes in stdout (decoded, undecodable
    bytes replaced) if he may read it."""
    return subprocess.run(["runuser", "-u", user, "--", "cat", "--", path],
                          capture_output=True, encoding="utf-8", errors="replace", timeout=30,
                          cwd="/")


def chown_to(path: str, user: str, mode: int) -> None:
    pw = pwd.getpwnam(user)
    os.lchown(path, pw.pw_uid, pw.pw_gid)
    if not os.path.islink(path):
        os.chmod(path, mode)


def uid_of(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def fingerprint(root: str) -> dict[str, tuple[int, int, str]]:
    """Every entry under ``root`` (no link followed): path -> (mode, uid, sha256 of a
    file's bytes / a link's target / '' for a directory). Bob's files, for "unchanged"."""
    out: dict[str, tuple[int, int, str]] = {}
    if not os.path.lexists(root):
        return out
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files, ""]:
            path = os.path.join(folder, name) if name else folder
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                digest = "-> " + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as fh:
                    digest = hashlib.sha256(fh.read()).hexdigest()
            else:
                digest = ""
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_uid, digest)
    return out


# --- Slurm as a user (deploy/devcluster run) -----------------------------------------


@dataclass
class Submitted:
    """What ``sbatch`` said: the job id, or its refusal (``returncode`` != 0, ``err``)."""

    returncode: int
    job_id: int | None
    out: str
    err: str


def devcluster_run(*argv: str, user: str | None = None, timeout: float = 60
                   ) -> subprocess.CompletedProcess:
    """A Slurm client of the mini-cluster (``deploy/devcluster run [--user U] cmd ...``)."""
    as_user = ["--user", user] if user else []
    return subprocess.run([DEVCLUSTER, "run", *as_user, *argv], capture_output=True,
                          text=True, timeout=timeout, cwd="/")


def sbatch(user: str, script: str, *args: str) -> Submitted:
    """Submit ``script`` (a batch script's text, ``#!`` and ``#SBATCH``/``#BB_LUA`` lines
    included) as ``user`` with real ``sbatch --parsable``; the script file is the user's."""
    fd, path = tempfile.mkstemp(prefix=f"secsuite-{user}-", suffix=".sh", dir="/tmp")  # noqa: S108
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(script)
        chown_to(path, user, 0o600)
        out = devcluster_run("sbatch", "--parsable", *args, path, user=user)
    finally:
        os.unlink(path)
    job_id = None
    if out.returncode == 0:
        job_id = int(out.stdout.strip().split(";")[0])
    return Submitted(out.returncode, job_id, out.stdout, out.stderr)


def job_info(job_id: int) -> dict[str, str]:
    """``scontrol show job -o <id>`` as a dict (JobState, Reason, UserId, Partition,
    Comment, ...); {} once Slurm forgot the job."""
    out = devcluster_run("scontrol", "show", "job", "-o", str(job_id))
    if out.returncode != 0:
        return {}
    info: dict[str, str] = {}
    for part in out.stdout.strip().split(" "):
        key, sep, value = part.partition("=")
        if sep:
            info[key] = value
        elif info:  # a value with spaces (Reason=..., Command=...) continues
            last = next(reversed(info))
            info[last] += " " + part
    return info


def job_user(info: dict[str, str]) -> str:
    """The user name of ``UserId=bob(1002)``."""
    return info.get("UserId", "").split("(", 1)[0]


def wait_job(job_id: int, states: set[str] | str, timeout: float = 60) -> dict[str, str]:
    """Poll ``job_info`` until the job's JobState is one of ``states``."""
    wanted = {states} if isinstance(states, str) else set(states)
    seen: list[dict[str, str]] = [{}]

    def reached() -> dict[str, str] | None:
        seen[0] = job_info(job_id)
        return seen[0] if seen[0].get("JobState") in wanted else None

    return poll_until(reached, f"job {job_id}: expected {'/'.join(sorted(wanted))}", timeout,
                      0.3, last=lambda: {k: seen[0].get(k) for k in
                                         ("JobState", "Reason", "UserId", "Partition")})


def cancel(job_id: int) -> None:
    """scancel as root (clean-up of what a test submitted)."""
    devcluster_run("scancel", "--signal=KILL", "--full", str(job_id))
    devcluster_run("scancel", str(job_id))


def squeue_as(user: str, fmt: str) -> str:
    """What ``user`` sees of every job with ``squeue -h -a -o FMT``."""
    out = devcluster_run("squeue", "-h", "-a", "-o", fmt, user=user)
    assert out.returncode == 0, out.stderr
    return out.stdout


# --- the orchestrator: services through the API ---------------------------------------


def service_status(orch, name: str) -> dict:
    code, st = orch.get(f"/ephemeralservice/status/{name}")
    assert code == 200, f"status of {name}: {code} {st}"
    return st


def wait_status(orch, name: str, wanted: str | tuple[str, ...], timeout: float = 120
                ) -> dict:
    wanted = (wanted,) if isinstance(wanted, str) else wanted
    seen: list[object] = [None]

    def reached() -> dict | None:
        try:
            seen[0] = service_status(orch, name)
        except OSError:
            return None
        return seen[0] if seen[0]["status"] in wanted else None  # type: ignore[index]

    return poll_until(reached, f"service {name}: expected {'/'.join(wanted)}", timeout, 0.3,
                      last=lambda: f"{seen[0]}\n{orch.log()[-3000:]}")


def reserve_body(name: str, user: str, token: str | None = None, flavor: str = "small"
                 ) -> dict:
    return {"name": name, "user": user,
            "user_slurm_token": token if token is not None else user_token(user),
            "type": "SBB", "attributes": {"flavor": flavor, "targets": ["/nonexistent/*"]}}


def reserve(orch, user: str, name: str | None = None, wanted: str = "ALLOCATED") -> str:
    """Reserve an SBB for ``user`` and wait until it is ``wanted``: its name."""
    name = name or unique("svc", user)
    code, answer = orch.post("/ephemeralservice/reserve", reserve_body(name, user))
    assert code == 200, answer
    wait_status(orch, name, wanted)
    return name


def release(orch, name: str, timeout: float = 120) -> None:
    """Release a service and wait until it is STOPPED and none of its owner's jobs of its
    name is live: the orchestrator cancels the job on its next cycle, and one stopped
    before that (the end of the session) would leave it running. (alice's look-alikes
    may carry the name too: they are hers, cancelled by ``alice_jobs``.)"""
    code, answer = orch.delete(f"/ephemeralservice/release/{name}")
    if code == 404:
        return  # released already (a teardown, a test)
    assert code == 200, f"release {name}: {code} {answer}"
    owner = wait_status(orch, name, "STOPPED", timeout)["user"]

    def live() -> list[tuple[str, str]]:
        return [(j.get("JobId", ""), j.get("JobState", "")) for j in service_jobs(name)
                if job_user(j) == owner and j.get("JobState") not in
                (*ENDED, "COMPLETING", "STAGE_OUT")]

    poll_until(lambda: not live(), f"the jobs of {name} ended", timeout, 0.5, last=live)


def service_jobs(name: str) -> list[dict[str, str]]:
    """Every job Slurm knows whose name is the service's (its service job)."""
    out = devcluster_run("squeue", "-h", "-a", "-t", "all", "-n", name, "-o", "%i")
    return [job_info(int(j)) for j in out.stdout.split()]


def live_job_of(name: str) -> dict[str, str]:
    """The service's one live job (PENDING/RUNNING/CONFIGURING)."""
    live = [j for j in service_jobs(name) if j.get("JobState") not in ENDED
            and j.get("JobState") not in ("COMPLETING", "STAGE_OUT")]
    assert len(live) == 1, f"service {name}: expected one live job, Slurm has {live}"
    return live[0]


# --- steps through the API ----------------------------------------------------------


def stage_in(name: str, target: str, *elements: str) -> dict:
    """A step_start copy mover."""
    return {"name": name, "trigger": "step_start", "target": target, "operation": "copy",
            "elements": list(elements)}


def launch_step(orch, user: str, service: str, movers: list[dict],
                command: str = "--wrap true", name: str | None = None) -> str:
    """step/launch for ``user`` on ``service`` (his) with ``movers``: the step's name."""
    name = name or unique("step", user)
    code, answer = orch.post("/step/launch", {
        "name": name, "user": user, "command": command,
        "services": [{"name": service, "datamovers": movers}]})
    assert code == 200, answer
    return name


def wait_step(orch, name: str, wanted: set[str] | str = STEP_FINAL, timeout: float = 120
              ) -> dict:
    """The step's status once it is one of ``wanted``."""
    wanted = {wanted} if isinstance(wanted, str) else wanted
    seen: list[object] = [None]

    def reached() -> dict | None:
        code, seen[0] = orch.get(f"/step/status/{name}")
        assert code == 200, seen[0]
        return seen[0] if seen[0]["status"] in wanted else None  # type: ignore[index]

    return poll_until(reached, f"step {name}: expected {'/'.join(sorted(wanted))}", timeout,
                      0.3, last=lambda: f"{seen[0]}\n{orch.log()[-3000:]}")


def step_secret(orch, name: str) -> str:
    """The step's mover secret as stored (read-only, as root): what only its movers get."""
    conn = connect_db(orch.state_db)
    try:
        row = conn.execute("SELECT mover_secret FROM step WHERE name = ?", (name,)).fetchone()
    finally:
        conn.close()
    assert row is not None, f"no step {name} in {orch.state_db}"
    return row[0]


@dataclass(frozen=True)
class Things:
    """What bob owns, as the orchestrator and Slurm show it: compared before/after."""

    status: str
    user: str
    placement: tuple
    job_id: str
    job_user: str
    job_state: str
    files: tuple = field(default=())


def placement_of(orch, name: str) -> tuple:
    """The reservation's state, seq and placement (datanodes, core ids, memory, storage),
    read from the state database as the orchestrator committed it (read-only: GET
    server/allocation would bind it)."""
    conn = connect_db(orch.state_db)
    try:
        row = conn.execute("SELECT state, seq, placement FROM reservation WHERE name = ?",
                           (name,)).fetchone()
    finally:
        conn.close()
    assert row is not None, f"no reservation {name} in {orch.state_db}"
    return tuple(row)


def snapshot(orch, name: str, files: str | None = None) -> Things:
    st = service_status(orch, name)
    job = live_job_of(name) if st["status"] not in ("STOPPED", "QUEUED") else {}
    return Things(st["status"], st["user"], placement_of(orch, name), job.get("JobId", ""),
                  job_user(job), job.get("JobState", ""),
                  tuple(sorted(fingerprint(files).items())) if files else ())


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bob_service(orchestrator) -> Iterator[str]:
    """bob's SBB service, ALLOCATED, its job running as bob on ``data``; released at the end
    of the session. Every test checks that it survived the attack unchanged."""
    name = reserve(orchestrator, BOB, unique("victim"))
    wait_job(int(live_job_of(name)["JobId"]), "RUNNING")
    yield name
    release(orchestrator, name)


@pytest.fixture(scope="session")
def alice_service(orchestrator) -> Iterator[str]:
    """alice's own SBB service, ALLOCATED (for the steps she may launch); released at the
    end of the session."""
    name = reserve(orchestrator, ALICE, unique("own", ALICE))
    yield name
    release(orchestrator, name)


@pytest.fixture
def bob_files() -> Iterator[str]:
    """bob's data on the HDD tier, as his own first move left it: ``<hdd>/bob`` 0700 and a
    0600 file in it. Removed after the test, with every other ``<tier>/bob`` (each test
    starts before bob's first move on NVMe and SSD)."""
    clear_bob_tiers()
    home = os.path.join(HDD, BOB)
    os.mkdir(home, 0o700)
    chown_to(home, BOB, 0o700)
    os.mkdir(os.path.join(home, "data"))
    chown_to(os.path.join(home, "data"), BOB, 0o700)
    secret = os.path.join(home, "data", "results.h5")
    with open(secret, "w") as fh:
        fh.write("bob's results\n" * 100)
    chown_to(secret, BOB, 0o600)
    yield home
    clear_bob_tiers()


def clear_bob_tiers() -> None:
    for root in TIERS:
        path = os.path.join(root, BOB)
        if os.path.islink(path) or os.path.isfile(path):
            os.unlink(path)
        elif os.path.isdir(path):
            shutil.rmtree(path)


@pytest.fixture
def bob_things(orchestrator, bob_service) -> Callable[[str | None], Things]:
    """snap(files=None): bob's service (status, user, resources, job) and, with a path,
    his files there; take one before the attack and compare after."""
    return lambda files=None: snapshot(orchestrator, bob_service, files)


@pytest.fixture
def alice_jobs() -> Iterator[Callable[..., Submitted]]:
    """submit(script, *sbatch args) as alice; every job she got is cancelled at the end."""
    made: list[int] = []

    def submit(script: str, *args: str) -> Submitted:
        sub = sbatch(ALICE, script, *args)
        if sub.job_id is not None:
            made.append(sub.job_id)
        return sub

    yield submit
    for job_id in made:
        cancel(job_id)


# --- further orchestrator processes on free loopback ports ----------------------------


@dataclass
class Server:
    """A ``serve`` process of the suite's own (not the session's 8080 one)."""

    proc: subprocess.Popen | None
    port: int
    directory: str
    config: str
    log_path: str

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def write_conf(directory: str, port: int, extra: str = "", state_db: str | None = None,
               text: str = SMALL_CONF) -> str:
    conf = text.format(state_db=state_db or os.path.join(directory, "state", "state.db"),
                       queue_policy="fifo")
    conf = conf.replace("listen = 127.0.0.1:8080", f"listen = 127.0.0.1:{port}") + extra
    path = os.path.join(directory, "wfm.conf")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(conf)
    os.chmod(path, 0o600)
    return path


def start_serve(directory: str, config: str, port: int, umask: int | None = None,
                wait: bool = True, **env: str) -> Server:
    """``wfm-orchestrator serve --config`` (this tree's package) on ``port``."""
    log_path = os.path.join(directory, "server.log")

    def preexec() -> None:
        if umask is not None:
            os.umask(umask)

    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wfm_orchestrator.cli", "serve", "--config", config],
            stdout=log, stderr=subprocess.STDOUT, env=server_env(**env), cwd=REPO,
            preexec_fn=preexec)  # noqa: PLW1509 - umask only, before exec
    server = Server(proc, port, directory, config, log_path)
    if wait:
        def listening() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"serve exited with {proc.returncode}:\n{server.log()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                return False
            return True

        poll_until(listening, f"serve listening on 127.0.0.1:{port}", 30, 0.05,
                   last=lambda: server.log()[-3000:])
    return server


def stop_serve(server: Server) -> None:
    if server.proc is not None and server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(10)


def open_directory() -> str:
    """A new directory under /tmp that every user may enter (0755), as a real deployment's
    parents are: an attack by alice on what is inside must not fail for a reason of the
    test's making (pytest's own tmp_path is 0700)."""
    directory = tempfile.mkdtemp(prefix="wfm-secsuite-", dir="/tmp")  # noqa: S108
    os.chmod(directory, 0o755)  # noqa: S103 - open to the attacker on purpose
    return directory


@pytest.fixture
def open_dir() -> Iterator[str]:
    """open_directory() for the test, removed after it."""
    directory = open_directory()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def servers(open_dir) -> Iterator[Callable[..., Server]]:
    """make(extra="", umask=None, text=SMALL_CONF, **env): a further ``serve`` on a free
    port with its own configuration and state (``<dir>/state/state.db``, in a directory open
    to other users like a real deployment's parents); stopped at the end of the test."""
    started: list[Server] = []

    def make(extra: str = "", umask: int | None = None, text: str = SMALL_CONF,
             **env: str) -> Server:
        directory = tempfile.mkdtemp(dir=open_dir)
        os.chmod(directory, 0o755)  # noqa: S103 - as a deployment's parents
        port = free_port()
        config = write_conf(directory, port, extra, text=text)
        server = start_serve(directory, config, port, umask, **env)
        started.append(server)
        return server

    yield make
    for server in started:
        stop_serve(server)


# --- tokens: a stand-in Keycloak (tests/jwks_fixture.py) -------------------------------


def request(port: int, method: str, path: str, token: str | None = None,
            body: object = None) -> tuple[int, dict[str, str], object]:
    """One HTTP request with an optional bearer token: (status, headers by lower-case
    name, JSON body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, None if body is None else json.dumps(body), headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = raw.decode(errors="replace")
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, answer
    finally:
        conn.close()


def roles(*names: str) -> dict:
    """Claims giving realm roles."""
    return {"realm_access": {"roles": list(names)}}


@pytest.fixture
def kc_server(servers):
    """(port, tokens, key, name): an orchestrator with ``auth = keycloak`` against a
    stand-in realm (its JWKS served over HTTP on loopback, one RSA key), holding a
    reservation of bob's that the Session Manager made (no Slurm: a pure Resource Manager,
    so the reservation stays FREE)."""
    from tests.jwks_fixture import REALM, JWKSServer, TokenFactory, new_rsa

    realm = JWKSServer()
    key = new_rsa("k1")
    realm.add(key)
    try:
        server = servers(f"keycloak_server = {realm.base_url}\nkeycloak_realm = {REALM}\n",
                         text=SMALL_CONF.replace("auth = none", "auth = keycloak"))
        tokens = TokenFactory(realm.issuer)
        sm = tokens.make(key, preferred_username="iosea-sm", **roles("session-manager"))
        name = unique("kc")
        body = {**reserve_body(name, BOB, token="bob-token"),  # noqa: S106 - not a secret
                "type": "GBF",
                "attributes": {"cores": 1, "msize": 10, "gssize": 0, "mountpoint": "/mnt/x"}}
        code, _, answer = request(server.port, "POST", "/v1.0.0/ephemeralservice/reserve",
                                  sm, body)
        assert code == 200, answer
        yield server.port, tokens, key, name
    finally:
        realm.stop()


def run_serve(config: str, timeout: float = 20) -> subprocess.CompletedProcess:
    """``serve`` expected to refuse to start: its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "wfm_orchestrator.cli", "serve", "--config", config],
        capture_output=True, text=True, timeout=timeout, env=server_env(), cwd=REPO)
