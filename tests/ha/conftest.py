"""Fixtures of the HA suite: the local HA cluster (deploy/hacluster), brought up fresh
once for the module and down at its end; the same bound to the Slurm mini-cluster."""

from __future__ import annotations

import os

import pytest

from tests.integration.minicluster import cluster_up, slurm_cmd
from wfm_orchestrator.service_job import TAG_PREFIX

from .cluster import dsn, hacluster, minicluster_lock, plugin_pointed_at, status, up


@pytest.fixture(scope="module")
def ha_cluster():
    """The two-host connection string of a freshly bootstrapped cluster (`down --purge`
    then `up`: no state of an earlier run); `down` at the end, its data and logs kept.

    Skipped only when not root (deploy/hacluster installs and starts daemons); CI runs
    as root, and `up` installs the Debian packages when they are missing."""
    if os.geteuid() != 0:
        pytest.skip("deploy/hacluster runs as root")
    pytest.importorskip("psycopg", reason="pip install '.[test]' (deploy/install does)")
    out = hacluster("down", "--purge", timeout=180)
    assert out.returncode == 0, out.stderr
    up()
    yield dsn()
    out = hacluster("down", timeout=180)
    assert out.returncode == 0, out.stderr


@pytest.fixture
def orchestrators(ha_dsn):
    """deploy/hacluster's two orchestrators running, one leading, on the session's
    cluster; `up` again after the test restarts the one it stopped."""
    up()  # both instances running, one leading
    yield
    up()  # the one the test stopped comes back, as the standby


@pytest.fixture(scope="module")
def slurm_ha():
    """The HA cluster, fresh and bound to the mini-cluster, with the plugin pointed at its
    orchestrators; both put back at the end (see the module's docstring)."""
    if os.geteuid() != 0:
        pytest.skip("deploy/hacluster runs as root")
    pytest.importorskip("psycopg", reason="pip install '.[test]' (deploy/install does)")
    with minicluster_lock():
        running, reason = cluster_up()
        if not running:
            pytest.skip(f"no Slurm mini-cluster: {reason}")
        was_up = hacluster("status", timeout=60).returncode == 0
        try:
            assert hacluster("down", "--purge", timeout=180).returncode == 0
            out = up(slurm="yes")
            assert "bound to the Slurm mini-cluster" in out.stdout, out.stdout
            urls = [o["url"] for o in status()["orchestrators"]]
            with plugin_pointed_at(urls):
                yield urls
        finally:
            # The services' jobs never outlive the test, whatever failed.
            prefix = f"{TAG_PREFIX}alice_ha"
            out = slurm_cmd("squeue", "-h", "-o", "%i|%k", timeout=30)
            leftovers = [line.split("|", 1)[0] for line in out.stdout.splitlines()
                         if line.split("|", 1)[-1].startswith(prefix)]
            if leftovers:
                slurm_cmd("scancel", *leftovers, timeout=30)
            out = hacluster("down", "--purge", timeout=180)
            assert out.returncode == 0, out.stderr
            if was_up:  # as the session's other tests had it: Resource Managers only
                up()
