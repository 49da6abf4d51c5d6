"""The local Slurm mini-cluster (deploy/devcluster): is it up, tokens, waits on its jobs.

Waiting is polling against a ``time.monotonic()`` deadline (tests/poll.py), never a
fixed sleep.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable

import pytest

from tests.poll import poll_until
from wfm_orchestrator.slurm import JobState, SlurmClient

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WFM_CONF = os.path.join(REPO, "wfm.conf")
DEVCLUSTER = os.path.join(REPO, "deploy", "devcluster")
RUN_DIR = "/run/wfm-devcluster"


def cluster_up() -> tuple[bool, str]:
    """(True, "") when ``scontrol ping`` reports UP, else (False, why)."""
    if not shutil.which("scontrol"):
        return False, "scontrol is not installed (run deploy/devcluster up as root)"
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"scontrol ping failed: {e}"
    if "is UP" not in out.stdout:
        return False, f"scontrol ping: {(out.stdout + out.stderr).strip()} (deploy/devcluster up)"
    return True, ""


def user_tier_dir(root: str, user: str) -> str:
    """``root/user``, the user's directory of a tier (where data movers resolve patterns),
    made as the mover would (owned by the user, 0700) when missing."""
    import pwd

    path = os.path.join(root, user)
    if not os.path.isdir(path):
        os.mkdir(path, 0o700)
        pw = pwd.getpwnam(user)
        os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def user_token(user: str, lifespan: int = 3600) -> str:
    """A Slurm JWT for ``user`` (scontrol token: root or SlurmUser only), as the Session
    Manager passes it in ``user_slurm_token``."""
    out = subprocess.run(["scontrol", "token", f"username={user}", f"lifespan={lifespan}"],
                         capture_output=True, text=True, timeout=20)
    if out.returncode != 0:
        pytest.fail(f"scontrol token username={user}: {out.stderr.strip()}")
    return out.stdout.strip().split("=", 1)[1]


def wait_for_state(client: SlurmClient, job_id: int, states: Iterable[str],
                   timeout: float = 30.0) -> JobState:
    """Poll until job ``job_id`` is in one of ``states``; fail with what it was in."""
    wanted = set(states)
    seen: list[JobState | None] = [None]

    def in_state() -> JobState | None:
        seen[0] = client.job_states([job_id]).get(job_id)
        return seen[0] if seen[0] is not None and seen[0].state in wanted else None

    def last() -> str:
        job = seen[0]
        return f"{job.state} ({job.reason or 'no reason'})" if job else "unknown"

    return poll_until(in_state, f"job {job_id}: expected {'/'.join(sorted(wanted))}",
                      timeout, interval=0.3, last=last)


def wait_for_file(path: str, timeout: float = 15.0) -> str:
    """The text of ``path`` once it is written (ends with a newline)."""
    def written() -> str | None:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError:
            return None
        return text if text.endswith("\n") else None

    return poll_until(written, f"{path}: written", timeout)


def devcluster(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([DEVCLUSTER, *args], capture_output=True, text=True, timeout=timeout)
