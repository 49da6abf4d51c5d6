"""Fixtures of the HA suite: the local HA cluster (deploy/hacluster), brought up fresh
once for the module and down at its end."""

from __future__ import annotations

import os

import pytest

from .cluster import dsn, hacluster, up


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
