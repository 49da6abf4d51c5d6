"""Secrets at rest: the state database (docs/security.md §9; threat-model rows of the local
user of the admin node).

The state database holds bob's Slurm token and every step's command and environment.
alice, a local user of the admin node, tries to read it from running orchestrators
(``runuser -u alice -- cat ...``), and prepares its directory before one starts: planted
files, a sticky ``/tmp``-like directory, a directory of her own. Each time she reads
nothing, or the orchestrator refuses to start naming ``state_db`` and the fix, and what
it refused is left as it was.
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import re
import stat
import subprocess
import uuid

import pytest

from tests.poll import poll_until

from .conftest import (
    ALICE,
    BOB,
    Server,
    chown_to,
    free_port,
    read_as,
    reserve_body,
    run_as,
    run_serve,
    start_serve,
    stop_serve,
    write_conf,
)

pytestmark = pytest.mark.integration

EXIT_STORE = 3
BOB_TOKEN = "bob-slurm-token-" + uuid.uuid4().hex  # what alice is after


def state_files(db: str) -> list[str]:
    return [db, db + "-wal", db + "-shm", db + ".lock"]


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def reserve_for_bob(port: int) -> str:
    """A reservation of bob's with his token, on a Slurm-less orchestrator: its name."""
    name = f"bob_secret_{uuid.uuid4().hex[:8]}"
    body = {**reserve_body(name, BOB, token=BOB_TOKEN), "type": "GBF",
            "attributes": {"cores": 1, "msize": 10, "gssize": 0, "mountpoint": "/mnt/x"}}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/v1.0.0/ephemeralservice/reserve", json.dumps(body),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        answer = resp.read()
    finally:
        conn.close()
    assert resp.status == 200, answer
    return name


def reservation_of(port: int, name: str) -> list:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", f"/v1.0.0/ephemeralservice/status/{name}")
        resp = conn.getresponse()
        return [resp.status, json.loads(resp.read())]
    finally:
        conn.close()


def assert_alice_reads_nothing(db: str) -> None:
    """Every state file exists and alice can neither read it nor list its directory."""
    for path in state_files(db):
        assert os.path.exists(path), f"{path} is not there: nothing to attack"
        out = read_as(ALICE, path)
        assert out.returncode != 0 and "Permission denied" in out.stderr, (
            f"alice read {path} (mode {mode(path):04o}): {out.stdout[:200]!r}")
        assert BOB_TOKEN not in out.stdout
        assert mode(path) == 0o600, f"{path}: {mode(path):04o}"
    directory = os.path.dirname(db)
    out = run_as(ALICE, "ls", "-la", directory)
    assert out.returncode != 0 and "Permission denied" in out.stderr, out.stdout
    assert mode(directory) == 0o700, f"{directory}: {mode(directory):04o}"


def test_alice_cannot_read_a_running_orchestrators_state_whatever_the_umask(
        orchestrator, servers, bob_things):
    """alice runs ``cat`` on ``state.db``, ``-wal``, ``-shm`` and ``.lock`` of two running
    orchestrators: the session's (bob's real Slurm token inside) and one started under
    umask 000 holding bob's reservation: "Permission denied" every time, the files 0600,
    their directory 0700. The session's on PostgreSQL (tests/conftest.py's
    integration_engine) keeps its state in the database: on disk, the configuration that
    holds the database's password is what alice must not read."""
    before = bob_things()
    if "://" in orchestrator.state_db:
        out = read_as(ALICE, orchestrator.config_path)
        assert out.returncode != 0 and "Permission denied" in out.stderr, out.stdout[:200]
        assert mode(orchestrator.config_path) == 0o600
    else:
        assert_alice_reads_nothing(orchestrator.state_db)
    server = servers(umask=0)
    name = reserve_for_bob(server.port)
    db = os.path.join(server.directory, "state", "state.db")
    assert_alice_reads_nothing(db)
    assert reservation_of(server.port, name)[1]["user"] == BOB
    assert bob_things() == before


def stop_and_open_up(server) -> str:
    """Stop ``server`` and leave its state as an older version or a restore would: the
    directory 0755, every file 0644 (alice can read them now). The database's path."""
    stop_serve(server)
    db = os.path.join(server.directory, "state", "state.db")
    os.chmod(os.path.dirname(db), 0o755)  # noqa: S103 - the leftover being tested
    for path in state_files(db):
        if os.path.exists(path):
            os.chmod(path, 0o644)  # noqa: S103
    return db


def test_files_left_open_are_tightened_at_start(servers):
    """A database left 0644 in a 0755 directory (an older version, a restore): alice can
    read bob's token there while the orchestrator is down; once it starts, every file is
    0600, the directory 0700, each change logged, and alice reads nothing."""
    server = servers()
    name = reserve_for_bob(server.port)
    db = stop_and_open_up(server)
    out = read_as(ALICE, db)
    assert out.returncode == 0  # the leftover is real: readable before the start
    again = start_serve(server.directory, server.config, server.port)
    try:
        assert reservation_of(again.port, name)[1]["user"] == BOB
        assert_alice_reads_nothing(db)
        log = again.log()
        assert re.search(rf"state database: {re.escape(db)} was open to other users "
                         r"\(mode 0644\): now 0600", log), log[-3000:]
        assert re.search(rf"{re.escape(os.path.dirname(db))}.*0755.*now 0700", log), \
            log[-3000:]
    finally:
        stop_serve(again)


def refused(config: str, db: str) -> str:
    """``serve`` refuses to start: exit 3, the message names ``state_db``'s directory and
    the fix. Its stderr."""
    out = run_serve(config)
    assert out.returncode == EXIT_STORE, f"{out.returncode}:\n{out.stderr[-3000:]}"
    assert os.path.dirname(db) in out.stderr and "state_db" in out.stderr, out.stderr[-3000:]
    return out.stderr


def test_a_shared_state_directory_is_refused_untouched(open_dir):
    """state_db in a directory shared with others (beside a 0644 wfm.conf, with a file of
    alice's): refused at start (exit 3) naming ``state_db``; never chmodded; alice's file
    and bob's nothing-yet untouched."""
    conf_dir = os.path.join(open_dir, "etc")
    os.mkdir(conf_dir)
    os.chmod(conf_dir, 0o755)  # noqa: S103 - the shared directory under test
    db = os.path.join(conf_dir, "state.db")
    config = write_conf(conf_dir, free_port(), state_db=db)
    os.chmod(config, 0o644)  # noqa: S103 - as /etc/wfm/wfm.conf usually is
    hers = os.path.join(conf_dir, "notes.txt")
    with open(hers, "w") as fh:
        fh.write("alice\n")
    chown_to(hers, ALICE, 0o644)
    err = refused(config, db)
    assert "chmod" in err or "directory" in err, err[-2000:]
    assert mode(conf_dir) == 0o755 and not os.path.exists(db)
    assert os.stat(hers).st_uid == pwd.getpwnam(ALICE).pw_uid


def test_a_sticky_world_writable_directory_is_refused(open_dir):
    """state_db in a ``/tmp``-like directory (1777) where alice planted ``state.db.lock``
    and a ``state.db`` of hers beforehand: refused at start; her files untouched, nothing
    written there."""
    shared = os.path.join(open_dir, "tmp")
    os.mkdir(shared)
    os.chmod(shared, 0o1777)  # noqa: S103 - the sticky directory under test
    db = os.path.join(shared, "state.db")
    config = write_conf(open_dir, free_port(), state_db=db)
    for path in (db, db + ".lock"):
        out = run_as(ALICE, "sh", "-c", f"umask 000; printf planted > {path}")
        assert out.returncode == 0, out.stderr
    before = {p: (os.stat(p).st_uid, mode(p), open(p, "rb").read()) for p in (db, db + ".lock")}  # noqa: SIM115
    err = refused(config, db)
    assert "sticky" in err or "others" in err, err[-2000:]
    after = {p: (os.stat(p).st_uid, mode(p), open(p, "rb").read()) for p in (db, db + ".lock")}  # noqa: SIM115
    assert after == before
    assert sorted(os.listdir(shared)) == ["state.db", "state.db.lock"]


def test_a_state_directory_owned_by_another_user_is_refused(open_dir):
    """alice owns the state directory (0700, so closed to everyone else): refused even
    so, since she could swap the files at any time; nothing is created in it."""
    hers = os.path.join(open_dir, "state")
    os.mkdir(hers)
    chown_to(hers, ALICE, 0o700)
    db = os.path.join(hers, "state.db")
    config = write_conf(open_dir, free_port(), state_db=db)
    err = refused(config, db)
    assert "alice" in err or str(pwd.getpwnam(ALICE).pw_uid) in err, err[-2000:]
    assert os.listdir(hers) == []
    assert os.stat(hers).st_uid == pwd.getpwnam(ALICE).pw_uid and mode(hers) == 0o700


SERVICE_PYTHON = "/opt/wfm-orchestrator/bin/python"  # the unit's environment (deploy/install)


def test_the_orchestrator_runs_unprivileged_as_the_unit_starts_it(open_dir, bob_files):
    """Row "code execution in the orchestrator's process" (the systemd unit).

    The mini-cluster runs no systemd (PID 1 is not systemd), so the unit itself cannot be
    started here; ``tests/unit/test_systemd_unit.py`` checks it with ``systemd-analyze
    verify``. The nearest real thing: ``serve`` started with the unit's credentials by
    ``setpriv`` (a user of its own with no account, no capabilities, no new privileges,
    ``UMask=0077``), then code running with exactly those credentials (what a flaw would
    give an attacker) tries to read bob's files and to signal slurmctld: both refused; the
    process holds no capability, and its state files are 0600."""
    if not os.path.exists(SERVICE_PYTHON):
        pytest.fail(f"{SERVICE_PYTHON} missing: deploy/install sets up the unit's environment")
    uid = 64123  # the unit's User=, with no account (like a DynamicUser)
    state = os.path.join(open_dir, "state")
    os.mkdir(state)
    os.chown(state, uid, uid)
    os.chmod(state, 0o700)  # StateDirectoryMode=0700
    port = free_port()
    config = write_conf(open_dir, port, state_db=os.path.join(state, "state.db"))
    os.chown(config, uid, uid)
    creds = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
             "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    # The package deploy/install put in the unit's environment (from this checkout in CI):
    # what the unit runs. A checkout's src/ has no compiled allocator unless built in place.
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    log_path = os.path.join(open_dir, "server.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*creds, "sh", "-c", f"umask 077; exec {SERVICE_PYTHON} -m wfm_orchestrator.cli "
             f"serve --config {config}"], stdout=log, stderr=subprocess.STDOUT, env=env,
            cwd="/")
    server = Server(proc, port, open_dir, config, log_path)
    try:
        def listening() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"serve exited with {proc.returncode}:\n{server.log()[-3000:]}")
            return os.path.exists(os.path.join(state, "state.db-wal"))

        poll_until(listening, "serve started as the unit's user", 30, 0.1,
                   last=lambda: server.log()[-2000:])
        with open(f"/proc/{proc.pid}/status") as fh:
            status = dict(line.split(":\t", 1) for line in fh.read().splitlines()
                          if ":\t" in line)
        assert status["Uid"].split()[0] == str(uid), status["Uid"]
        assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0, status
        assert status["NoNewPrivs"].strip() == "1", status
        for name in ("state.db", "state.db-wal", "state.db.lock"):
            assert mode(os.path.join(state, name)) == 0o600, name
        # What code running with these credentials can do to bob and to Slurm.
        secret = os.path.join(bob_files, "data", "results.h5")
        attack = subprocess.run([*creds, "cat", secret], capture_output=True, text=True,
                                timeout=10)
        assert attack.returncode != 0 and "Permission denied" in attack.stderr, attack
        with open("/run/wfm-devcluster/slurmctld.pid") as fh:
            ctld = fh.read().strip()
        attack = subprocess.run([*creds, "kill", "-0", ctld], capture_output=True, text=True,
                                timeout=10)
        assert attack.returncode != 0 and "not permitted" in attack.stderr, attack
    finally:
        stop_serve(server)
