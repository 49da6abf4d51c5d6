"""Fixtures for tests against the real Slurm mini-cluster (deploy/devcluster up).

Tests skip only when the mini-cluster is truly absent (``scontrol ping`` does
not report UP); anything else wrong with it is a failure. Waiting is polling
against a ``time.monotonic()`` deadline, never a fixed sleep.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable

import pytest

from wfm_orchestrator.config import load_config
from wfm_orchestrator.slurm import JobSpec, JobState, SlurmClient

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WFM_CONF = os.path.join(REPO, "wfm.conf")
DEVCLUSTER = os.path.join(REPO, "deploy", "devcluster")
RUN_DIR = "/run/wfm-devcluster"


def _cluster_up() -> tuple[bool, str]:
    if not shutil.which("scontrol"):
        return False, "scontrol is not installed (run deploy/devcluster up as root)"
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"scontrol ping failed: {e}"
    if "is UP" not in out.stdout:
        return False, f"scontrol ping: {(out.stdout + out.stderr).strip()} (deploy/devcluster up)"
    return True, ""


@pytest.fixture(scope="session")
def wfm_config():
    return load_config(WFM_CONF)


@pytest.fixture(scope="session")
def slurm_cluster(wfm_config):
    """The mini-cluster is UP, else the test is skipped with the reason."""
    up, reason = _cluster_up()
    if not up:
        pytest.skip(f"no Slurm mini-cluster: {reason}")
    assert wfm_config.slurmrestd_url, "wfm.conf has no slurmrestd_url"
    assert os.path.exists(wfm_config.slurm_token_file), (
        f"the mini-cluster is up but {wfm_config.slurm_token_file} is missing: "
        "run deploy/devcluster up")
    return wfm_config


@pytest.fixture
def client(slurm_cluster):
    c = SlurmClient.from_config(slurm_cluster)
    yield c
    c.close()


def make_token(user: str, lifespan: int = 600) -> str:
    """A Slurm JWT for ``user`` (scontrol token: root or SlurmUser only)."""
    out = subprocess.run(["scontrol", "token", f"username={user}", f"lifespan={lifespan}"],
                         capture_output=True, text=True, timeout=20)
    if out.returncode != 0:
        pytest.fail(f"scontrol token username={user}: {out.stderr.strip()}")
    return out.stdout.strip().split("=", 1)[1]


@pytest.fixture
def user_token() -> Callable[..., str]:
    return make_token


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def job_factory(client):
    """submit(spec, user, user_token=None) -> job id; cancels what it submitted at the end."""
    submitted: list[int] = []

    def submit(spec: JobSpec, user: str = "alice", user_token: str | None = None) -> int:
        job_id = client.submit(spec, user=user, user_token=user_token)
        submitted.append(job_id)
        return job_id

    yield submit
    for job_id in submitted:
        try:
            client.cancel(job_id, signal="SIGKILL")
        except Exception as e:  # noqa: BLE001 - cleanup must go on
            print(f"cleanup: cancel {job_id}: {e}")


def wait_for_state(client: SlurmClient, job_id: int, states: Iterable[str],
                   timeout: float = 30.0) -> JobState:
    """Poll until job ``job_id`` is in one of ``states``; fail with what it was in."""
    wanted = set(states)
    deadline = time.monotonic() + timeout
    last: JobState | None = None
    while True:
        last = client.job_states([job_id]).get(job_id)
        if last is not None and last.state in wanted:
            return last
        if time.monotonic() >= deadline:
            seen = f"still {last.state} ({last.reason or 'no reason'})" if last else "unknown"
            pytest.fail(f"job {job_id}: expected {'/'.join(sorted(wanted))}, "
                        f"{seen} after {timeout:g} s")
        time.sleep(0.3)


def wait_for_file(path: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
            if text.endswith("\n"):
                return text
        except FileNotFoundError:
            pass
        if time.monotonic() >= deadline:
            pytest.fail(f"{path}: not written after {timeout:g} s")
        time.sleep(0.2)


def devcluster(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([DEVCLUSTER, *args], capture_output=True, text=True, timeout=timeout)
