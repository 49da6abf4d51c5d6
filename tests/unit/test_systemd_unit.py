"""deploy/wfm-orchestrator.service: valid for systemd, and private state whatever the umask."""

import os
import shlex
import subprocess

from wfm_orchestrator.config import SETTINGS

from ..conftest import ROOT

UNIT = os.path.join(ROOT, "deploy", "wfm-orchestrator.service")


def directives() -> dict[str, list[str]]:
    """Each key of the unit with its values in order (systemd keys may repeat)."""
    out: dict[str, list[str]] = {}
    with open(UNIT, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line and not line.startswith(("#", ";", "[")):
                key, _, value = line.partition("=")
                out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_systemd_analyze_verify_accepts_the_unit():
    """No error and no warning (an unknown or misspelt key is only a warning: it fails here).

    verify also checks that ExecStart's program exists: deploy/install makes
    /opt/wfm-orchestrator and installs systemd-analyze (Debian's systemd package);
    it runs without systemd as PID 1.
    """
    done = subprocess.run(["systemd-analyze", "verify", UNIT], capture_output=True,
                          text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout + done.stderr) == (0, ""), \
        f"{done.stdout}{done.stderr}(run deploy/install if ExecStart's program is missing)"


def test_the_unit_keeps_the_state_private_and_the_service_unprivileged():
    """UMask=0077, its own user, and state_db's default directory as its 0700 StateDirectory."""
    unit = directives()
    assert unit["UMask"] == ["0077"]
    assert unit["User"] not in (["root"], ["0"]) and unit["User"] == ["wfm-orchestrator"]
    assert unit["NoNewPrivileges"] == ["yes"] and unit["ProtectSystem"] == ["strict"]
    assert unit["CapabilityBoundingSet"] == [""]
    state_dir = os.path.join("/var/lib", *unit["StateDirectory"])
    assert unit["StateDirectoryMode"] == ["0700"]
    # ProtectSystem=strict: the default state_db must lie in the one writable directory.
    assert os.path.dirname(SETTINGS["state_db"].default) == state_dir
    assert shlex.split(unit["ExecStart"][0]) == [
        "/opt/wfm-orchestrator/bin/wfm-orchestrator", "serve", "--config", "/etc/wfm/wfm.conf"]


def test_the_ha_drop_in_is_valid_and_keeps_restarting_a_standby(tmp_path):
    """deploy/examples/wfm-orchestrator-ha.conf (docs/ha.md), read as the unit's drop-in:
    no error, no warning, and restarts that never hit systemd's start limit."""
    drop_in = os.path.join(ROOT, "deploy", "examples", "wfm-orchestrator-ha.conf")
    (tmp_path / "wfm-orchestrator.service").write_text(open(UNIT, encoding="utf-8").read())
    (tmp_path / "wfm-orchestrator.service.d").mkdir()
    (tmp_path / "wfm-orchestrator.service.d" / "ha.conf").write_text(
        open(drop_in, encoding="utf-8").read())
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"}
    done = subprocess.run(["systemd-analyze", "verify", "wfm-orchestrator.service"],
                          capture_output=True, text=True, timeout=60, check=False, env=env)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    with open(drop_in, encoding="utf-8") as fh:
        text = fh.read()
    assert "\nStartLimitIntervalSec=0\n" in text and "\nRestartSec=5\n" in text
