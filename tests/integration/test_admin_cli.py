"""The administrator's command line against a real ``serve`` process, then the same
database with the service stopped (issue #19 item 1)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import urllib.request

import pytest

from tests.conftest import server_env

from .raw_server import stop_server
from .test_dashboard import ordinary_users

# A real server process on a loopback port, no Slurm.
pytestmark = pytest.mark.server


def cli(tmp_path, *argv: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wfm_orchestrator.cli", *argv, "--config",
         str(tmp_path / "wfm.conf")],
        capture_output=True, text=True, timeout=60, env=server_env(**(env or {})))


def reserve(port: int, name: str, user: str, cores: int, servers: int = 1) -> dict:
    body = {"name": name, "user": user, "user_slurm_token": "t", "type": "GBF",
            "servers": servers, "attributes": {"cores": cores, "gssize": 1024,
                                               "mountpoint": "/m"}}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1.0.0/ephemeralservice/reserve",
                                 data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
        return json.loads(resp.read())


def test_commands_on_a_running_service(admin_server, tmp_path):
    """status, datanodes, reservations, show, drain, resume, steps: tables and --json."""
    alice, bob = ordinary_users()
    port = admin_server.port
    reserve(port, "a_s_one", alice, cores=8)
    reserve(port, "b_s_two", bob, cores=4, servers=3)
    assert reserve(port, "b_s_three", bob, cores=8)["status"] == "QUEUED"

    r = cli(tmp_path, "status")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "no Slurm (Resource Manager only)" in out
    lines = out.splitlines()
    head = lines.index(next(ln for ln in lines if ln.startswith("DATANODE")))
    assert lines[head].split() == ["DATANODE", "LOCATION", "STATE", "CORES", "MEMORY",
                                   "STORAGE", "REASON"]
    assert lines[head + 1].split() == ["dn1", "loc1", "up", "0/8", "16G/16G", "1023G/1T"]
    assert lines[head + 1].index("0/8") + 3 == lines[head].index("CORES") + 5  # aligned
    assert "reservations: 1 QUEUED, 2 FREE, 0 ALLOCATED, 0 RELEASED" in out
    assert "queue: 1 waiting, the oldest for" in out

    r = cli(tmp_path, "drain", "dn4", "--reason", "new disks")
    assert r.returncode == 0, r.stderr
    assert "drained" in r.stdout and "new disks" in r.stdout
    nodes = json.loads(cli(tmp_path, "datanodes", "--json").stdout)
    assert [(n["name"], n["state"], n["reason"]) for n in nodes][3] == ("dn4", "drained",
                                                                         "new disks")
    assert cli(tmp_path, "datanodes").stdout.splitlines()[4].split() == [
        "dn4", "loc2", "drained", "4/8", "16G/16G", "1023G/1T", "new", "disks"]

    mine = json.loads(cli(tmp_path, "reservations", "--user", bob, "--json").stdout)
    assert [m["name"] for m in mine] == ["b_s_two", "b_s_three"]
    queued = cli(tmp_path, "reservations", "--state", "QUEUED").stdout.splitlines()
    assert queued[0].split() == ["NAME", "USER", "TYPE", "STATE", "SERVERS", "CORES",
                                 "MEMORY", "STORAGE", "WHERE", "CREATED"]
    assert queued[1].split()[:5] == ["b_s_three", bob, "GBF", "QUEUED", "#1"]
    bad = cli(tmp_path, "reservations", "--state", "LOST")
    assert bad.returncode == 1 and "unknown state 'LOST'" in bad.stderr

    shown = cli(tmp_path, "show", "a_s_one")
    assert shown.returncode == 0, shown.stderr
    assert "state:" in shown.stdout and "FREE" in shown.stdout
    assert "datanodes:" in shown.stdout and "dn1" in shown.stdout
    missing = cli(tmp_path, "show", "nobody_s_x")
    assert missing.returncode == 1 and "not found" in missing.stderr

    r = cli(tmp_path, "resume", "dn4")
    assert r.returncode == 0 and " up " in r.stdout, r.stdout
    r = cli(tmp_path, "release", "a_s_one")
    assert r.returncode == 0, r.stderr
    assert json.loads(cli(tmp_path, "show", "b_s_three", "--json").stdout)[
        "reservation"]["state"] == "FREE"  # admitted once a_s_one's dn1 was free
    assert json.loads(cli(tmp_path, "steps", "--json").stdout) == []
    aborted = cli(tmp_path, "abort", "a_s_step")  # the service's refusal, its words
    assert aborted.returncode == 1
    assert aborted.stderr == "wfm-orchestrator: step 'a_s_step' not found: no such step (500)\n"
    unknown = cli(tmp_path, "drain", "dn9", "--reason", "x")
    assert unknown.returncode == 1 and "dn9" in unknown.stderr


def test_commands_on_a_stopped_service(admin_server, tmp_path):
    """Stopped: the API commands say so (exit 4); release, db check and db backup work
    under the store's lock, and a release lets a shrunk configuration start."""
    alice, _ = ordinary_users()
    reserve(admin_server.port, "a_s_big", alice, cores=8, servers=4)

    check = cli(tmp_path, "db", "check")
    assert check.returncode == 0, check.stderr
    assert "in use by the running service: checked read-only" in check.stdout
    backup = tmp_path / "backup.db"
    r = cli(tmp_path, "db", "backup", str(backup))
    assert r.returncode == 0, r.stderr
    assert oct(os.stat(backup).st_mode & 0o777) == "0o600"
    with sqlite3.connect(backup) as conn:
        assert conn.execute("SELECT state FROM reservation").fetchall() == [("FREE",)]
    busy = cli(tmp_path, "release", "a_s_big")
    assert busy.returncode == 0  # through the API while it runs
    reserve(admin_server.port, "a_s_again", alice, cores=8, servers=4)
    stop_server(admin_server)

    r = cli(tmp_path, "status")
    assert r.returncode == 4 and "no orchestrator answers at http://127.0.0.1:" in r.stderr
    # The site removes two datanodes: start-up would refuse the held reservation.
    conf = tmp_path / "wfm.conf"
    conf.write_text(conf.read_text().replace("Datanodes=dn[3-4]", "Datanodes=")
                    .replace("Datanode=dn[1-4]", "Datanode=dn[1-2]"))
    check = cli(tmp_path, "db", "check")
    assert check.returncode == 1
    assert "PROBLEM: reservation a_s_again no longer fits" in check.stdout
    r = cli(tmp_path, "release", "a_s_again")
    assert r.returncode == 0, r.stderr
    assert "reservation a_s_again released (was FREE)" in r.stdout
    check = cli(tmp_path, "db", "check")
    assert check.returncode == 0, check.stdout
    assert "every held reservation fits the configured datanodes" in check.stdout
    again = cli(tmp_path, "release", "a_s_again")
    assert again.returncode == 1 and "no live reservation" in again.stderr


def test_help_and_version_speak_to_administrators(tmp_path):
    r = subprocess.run([sys.executable, "-m", "wfm_orchestrator.cli", "--help"],
                       capture_output=True, text=True, env=server_env(), timeout=60)
    assert r.returncode == 0
    for words in ("WFM_ADMIN_TOKEN_FILE", "exit codes:", "/etc/wfm/wfm.conf", "drain"):
        assert words in r.stdout, words
    r = subprocess.run([sys.executable, "-m", "wfm_orchestrator.cli", "--version"],
                       capture_output=True, text=True, env=server_env(), timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("wfm-orchestrator 0.")


def test_reload_by_command_and_by_sighup(admin_server, tmp_path):
    """reload (the command) and SIGHUP read wfm.conf again; a bad file is refused with
    file:line, the running configuration kept."""
    import signal

    from tests.poll import poll_until

    conf = tmp_path / "wfm.conf"
    text = conf.read_text()
    conf.write_text(text.replace("Flavor=small  MemorySize=5GB  Cores=2",
                                 "Flavor=small  MemorySize=5GB  Cores=many"))
    bad = cli(tmp_path, "reload")  # the command reads the file first: refused here
    assert bad.returncode == 2, bad.stdout
    assert f"{conf}:11: Cores='many'" in bad.stderr
    assert "not reloaded: the running service keeps its configuration" in bad.stderr
    admin_server.proc.send_signal(signal.SIGHUP)  # the service refuses it too
    poll_until(lambda: f"{conf}:11: Cores='many'" in admin_server.log(),
               "the refused reload logged with file:line", 10, last=admin_server.log)
    assert "reload refused, the running configuration is kept" in admin_server.log()
    conf.write_text(text.replace("Datanode=dn[1-4]", "Datanode=dn[1-5]")
                    .replace("Datanodes=dn[3-4]", "Datanodes=dn[3-5]"))
    r = cli(tmp_path, "reload")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1:] == ["  location loc2 changed", "  datanode dn5 added"]

    conf.write_text(text.replace("Flavor=small  MemorySize=5GB  Cores=2",
                                 "Flavor=small  MemorySize=5GB  Cores=3"))
    admin_server.proc.send_signal(signal.SIGHUP)

    def small_cores():
        with urllib.request.urlopen(  # noqa: S310 - loopback
                f"http://127.0.0.1:{admin_server.port}/v1.0.0/ephemeralservice/flavors",
                timeout=5) as resp:
            return json.loads(resp.read())[0]["cores"] == 3

    poll_until(small_cores, "flavor small with 3 cores after SIGHUP", 10,
               last=admin_server.log)
    # The flavor changes when the configuration is adopted; the reload's log lines follow.
    poll_until(lambda: "reload: datanode dn5 removed" in admin_server.log(),
               "the SIGHUP reload's changes logged", 10, last=admin_server.log)
    assert admin_server.proc.poll() is None
