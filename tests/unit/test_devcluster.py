"""deploy/devcluster refuses what it must never do, and renders both Slurm versions alike.

No Slurm is started here: every command below is refused before the script
does anything, which the stubbed system commands prove (none of them runs).
"""

import os
import subprocess
import sys

import pytest

from ..conftest import ROOT

DEVCLUSTER = os.path.join(ROOT, "deploy", "devcluster")
RENDER = os.path.join(ROOT, "deploy", "devcluster_conf.py")
def devcluster(path, *args):
    return subprocess.run(["/bin/bash", DEVCLUSTER, *args], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "PATH": path})


@pytest.mark.parametrize("argv", [
    ["run", "touch", "{tmp}/made"],
    ["run", "--user", "alice", "rm", "-rf", "{tmp}/keep"],
    ["run", "/usr/bin/sbatch", "--wrap", "hostname"],
    ["run", "sbatch;touch", "{tmp}/made"],
    ["run", "--user", "alice;touch {tmp}/made", "squeue"],
    ["run", "--user", "-1", "squeue"],
])
def test_run_refuses_anything_but_the_slurm_clients_without_running_anything(stubs, argv):
    """`run` refuses other commands and bad user names (exit 2) before calling anything."""
    path, calls, tmp = stubs
    (tmp / "keep").mkdir()
    out = devcluster(path, *[a.format(tmp=tmp) for a in argv])
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "refused" in out.stderr
    assert not calls.exists(), calls.read_text()
    assert not (tmp / "made").exists()
    assert (tmp / "keep").is_dir()


def test_run_names_the_allowed_clients_when_refusing(stubs):
    path, _, _ = stubs
    out = devcluster(path, "run", "bash")
    for client in ("sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo"):
        assert client in out.stderr


@pytest.mark.parametrize("argv", [["run"], ["run", "--user"], ["run", "--user", "alice"],
                                  ["up", "--slurm"], ["up", "--bogus"], ["bogus"], []])
def test_incomplete_commands_print_the_usage_and_do_nothing(stubs, argv):
    path, calls, _ = stubs
    out = devcluster(path, *argv)
    assert out.returncode == 2
    assert "usage:" in out.stderr
    assert not calls.exists(), calls.read_text()


def test_up_refuses_an_unknown_slurm_version_before_touching_anything(stubs):
    path, calls, _ = stubs
    out = devcluster(path, "up", "--slurm", "23.02")
    assert out.returncode == 2
    assert "unknown Slurm version '23.02'" in out.stderr
    assert "22.05 24.11" in out.stderr
    assert not calls.exists(), calls.read_text()


def render(tmp_path, version):
    out_dir = tmp_path / version
    out_dir.mkdir()
    subprocess.run(
        [sys.executable, RENDER, "render", os.path.join(ROOT, "wfm.conf"), str(out_dir),
         "--hostname", "h", "--run-dir", "/run/r", "--state-dir", "/var/lib/s",
         "--log-dir", "/var/log/l", "--slurm", version],
        check=True, timeout=30)
    return {p.name: p.read_text() for p in out_dir.iterdir()}


def test_both_versions_get_the_same_cluster_and_24_11_runs_without_cgroups(tmp_path):
    """Same nodes, ports, partitions and plugin set-up; 24.11 adds cgroup.conf and the
    burst buffer's PollInterval (its test_data_in poll), which 22.05's slurmctld refuses."""
    old, new = render(tmp_path, "22.05"), render(tmp_path, "24.11")
    assert "cgroup.conf" not in old
    assert "CgroupPlugin=disabled" in new.pop("cgroup.conf").splitlines()
    assert new["slurm.conf"] == old["slurm.conf"]
    assert "ProctrackType=proctrack/linuxproc" in new["slurm.conf"].splitlines()
    assert "TaskPlugin=task/none" in new["slurm.conf"].splitlines()
    assert "PollInterval=3" in new["burst_buffer.conf"].splitlines()
    assert "PollInterval" not in old["burst_buffer.conf"]
    assert new["burst_buffer.conf"].replace("PollInterval=3\n", "") == old["burst_buffer.conf"]
    assert new["burst_buffer_wfm.conf"] == old["burst_buffer_wfm.conf"]
    assert "WFM_SLURM_VERSION=22.05" in old["env"].splitlines()
    assert "WFM_SLURM_VERSION=24.11" in new["env"].splitlines()
    assert new["env"].replace("24.11", "22.05") == old["env"]


def test_the_renderer_refuses_an_unknown_version(tmp_path):
    out = subprocess.run(
        [sys.executable, RENDER, "render", os.path.join(ROOT, "wfm.conf"), str(tmp_path),
         "--hostname", "h", "--run-dir", "/r", "--state-dir", "/s", "--log-dir", "/l",
         "--slurm", "23.02"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "invalid choice: '23.02'" in out.stderr
    assert not list(tmp_path.iterdir())
