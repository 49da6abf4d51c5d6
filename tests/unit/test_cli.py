"""The `wfm-orchestrator` command: installed as a console script; `serve` refuses to start,
with a clear message, on bad configuration or state."""

import os
import shutil
import subprocess

from wfm_orchestrator.cli import main

from ..conftest import ROOT, SMALL_CONF, server_env


def write(tmp_path, text):
    path = tmp_path / "wfm.conf"
    path.write_text(text)
    return str(path)


def test_serve_refuses_an_invalid_configuration(tmp_path, capsys):
    """Exit 2 and every configuration error with file:line; nothing listens."""
    conf = write(tmp_path, SMALL_CONF.format(state_db=tmp_path / "s.db", queue_policy="lifo"))
    assert main(["serve", "--config", conf]) == 2
    err = capsys.readouterr().err
    assert "invalid configuration, not starting" in err and f"{conf}:6:" in err
    assert "queue_policy" in err
    assert not (tmp_path / "s.db").exists()


def test_serve_refuses_an_unusable_state_database(tmp_path, capsys):
    """Exit 3 and the reason when state_db is not an SQLite database; the file is kept."""
    db = tmp_path / "s.db"
    db.write_bytes(b"not a database at all" * 100)
    conf = write(tmp_path, SMALL_CONF.format(state_db=db, queue_policy="fifo"))
    assert main(["serve", "--config", conf]) == 3
    err = capsys.readouterr().err
    assert "state database unusable, not starting" in err and "not an SQLite database" in err
    assert db.read_bytes() == b"not a database at all" * 100


def test_serve_refuses_a_state_directory_shared_with_others(tmp_path, capsys):
    """Exit 3, naming state_db and the fix, when its directory is open and holds others' files."""
    shared = tmp_path / "etc-wfm"
    shared.mkdir()
    os.chmod(shared, 0o755)  # noqa: S103 - the shared directory under test
    conf = write(shared, SMALL_CONF.format(state_db=shared / "s.db", queue_policy="fifo"))
    os.chmod(conf, 0o644)  # a configuration readable by all, beside the database
    assert main(["serve", "--config", conf]) == 3
    err = capsys.readouterr().err
    assert "state database unusable, not starting" in err
    assert f"state_db {shared / 's.db'}: its directory {shared} (mode 0755)" in err
    assert f"chmod 0700 {shared}" in err
    assert sorted(os.listdir(shared)) == ["wfm.conf"]  # nothing created, nothing chmodded
    assert os.stat(shared).st_mode & 0o777 == 0o755


def test_release_without_slurm_is_500_no_slurm_configured(client):
    """Resource-Manager-only mode: endpoints needing Slurm answer 500 "no Slurm configured"."""
    client.simulate_post("/v1.0.0/ephemeralservice/reserve", json={
        "name": "a_b_c", "user": "alice", "user_slurm_token": "t", "type": "GBF",
        "attributes": {"gssize": 1, "mountpoint": "/m"}})
    r = client.simulate_delete("/v1.0.0/ephemeralservice/release/a_b_c")
    assert r.status_code == 500 and "no Slurm configured" in r.json["message"]


def test_console_script_is_installed_and_runs():
    """The `wfm-orchestrator` found on PATH (what pip installed, not `python -m`) runs
    check-config on the repository's wfm.conf and prints its summary."""
    script = shutil.which("wfm-orchestrator")
    assert script, ("the wfm-orchestrator console script is not on PATH: install the "
                    "package (pip install .) in the environment that runs the tests")
    # server_env: the script's entry point imports the package this test run imported.
    out = subprocess.run([script, "check-config", os.path.join(ROOT, "wfm.conf")],
                         capture_output=True, text=True, timeout=60, check=False,
                         env=server_env())
    assert out.returncode == 0, out.stderr
    assert "loc1: compute cn1, datanodes dn1, neighbours loc2" in out.stdout, out.stdout


def test_serve_starts_degraded_when_no_slurm_api_version_can_be_chosen(caplog):
    """slurmrestd unreachable or serving none of our versions: logged as a degraded start
    with the reason (versions found and needed); nothing raised, so serve goes on."""
    from wfm_orchestrator.cli import _choose_slurm_api
    from wfm_orchestrator.errors import SlurmUnavailable

    class NoVersion:
        configured_version = "auto"

        def negotiate(self):
            raise SlurmUnavailable("slurmrestd at http://x serves API versions v0.0.37; "
                                   "this orchestrator speaks v0.0.42, v0.0.41, v0.0.40, v0.0.38")

    _choose_slurm_api(NoVersion())
    assert "starting degraded" in caplog.text and "serves API versions v0.0.37" in caplog.text
