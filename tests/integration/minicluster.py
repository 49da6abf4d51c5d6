"""The local Slurm mini-cluster (deploy/devcluster): is it up, tokens, waits on its jobs.

Waiting is polling against a ``time.monotonic()`` deadline (tests/poll.py), never a
fixed sleep.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import pytest

from tests.poll import poll_until
from wfm_orchestrator.slurm import JobState, SlurmClient

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WFM_CONF = os.path.join(REPO, "wfm.conf")
DEVCLUSTER = os.path.join(REPO, "deploy", "devcluster")
RUN_DIR = "/run/wfm-devcluster"
SLURMCTLD_LOG = "/var/log/wfm-devcluster/slurmctld.log"


# The Slurm versions the mini-cluster runs (deploy/devcluster up --slurm V).
SLURM_VERSIONS = ("22.05", "24.11")


@functools.cache
def versions_under_test() -> tuple[str, ...]:
    """The versions the mini-cluster tests run on, in order: ``$WFM_TEST_SLURM``
    (space-separated) or every version the mini-cluster knows."""
    wanted = os.environ.get("WFM_TEST_SLURM", " ".join(SLURM_VERSIONS)).split()
    unknown = [v for v in wanted if v not in SLURM_VERSIONS]
    if unknown:
        raise pytest.UsageError(f"WFM_TEST_SLURM: unknown Slurm version(s) {unknown} "
                                f"(known: {' '.join(SLURM_VERSIONS)})")
    # The running version first: pytest runs the groups in this order, one switch fewer.
    running = running_slurm()
    return tuple(sorted(wanted, key=lambda v: v != running))


def running_slurm() -> str | None:
    """The version of the mini-cluster that runs (``deploy/devcluster status``), or None."""
    try:
        out = devcluster("status", timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"^slurm:\s+(\S+) runs", out.stdout, re.M)
    return found.group(1) if found else None


# The version that ran before the tests first switched (restore_slurm brings it back).
_before_switch: list[str] = []


def use_slurm(version: str) -> None:
    """Make ``version`` the running mini-cluster (the other one stops); the first start of
    24.11 builds its Debian 13 tree (debootstrap), which takes minutes."""
    running = running_slurm()
    if running == version:
        return
    if running is not None and not _before_switch:
        _before_switch.append(running)
    out = devcluster("up", "--slurm", version, timeout=1800)
    assert out.returncode == 0, f"deploy/devcluster up --slurm {version}:\n{out.stderr[-3000:]}"


def restore_slurm() -> None:
    """Leave the mini-cluster on the version that ran before the tests switched it."""
    if _before_switch:
        use_slurm(_before_switch[0])


def slurm_cmd(*argv: str, user: str | None = None, timeout: float = 60
              ) -> subprocess.CompletedProcess:
    """A Slurm client command of the running mini-cluster (``deploy/devcluster run``), as
    root or as ``user``: the host's 22.05 clients cannot talk to 24.11's daemons."""
    as_user = ("--user", user) if user else ()
    return devcluster("run", *as_user, *argv, timeout=timeout)


def cluster_up() -> tuple[bool, str]:
    """(True, "") when the running mini-cluster's ``scontrol ping`` reports UP, else
    (False, why)."""
    if not os.path.exists(DEVCLUSTER) or running_slurm() is None:
        return False, "no mini-cluster runs (deploy/devcluster up as root)"
    try:
        out = slurm_cmd("scontrol", "ping", timeout=30)
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
    out = slurm_cmd("scontrol", "token", f"username={user}", f"lifespan={lifespan}")
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


@contextmanager
def node_taken(node: str, user: str, partition: str, timeout: float = 60) -> Iterator[int]:
    """Every CPU ``node`` has free taken by a job of ``user`` (RUNNING when this returns,
    cancelled at the end): a job pinned to ``node`` meanwhile waits PENDING (Resources),
    and Slurm sets its burst buffer up while it waits (docs/slurm.md, "A job pinned to a
    busy node"). Its time limit lets the scheduler plan the waiting job's start (Slurm
    sets up only a job with a planned start) and is short, 2 min: a slurmctld killed
    soon after the cancel, before it saved it, brings the job back RUNNING until then."""
    info = slurm_cmd("scontrol", "show", "node", "-o", node).stdout
    idle = int(re.search(r"CPUTot=(\d+)", info).group(1)) \
        - int(re.search(r"CPUAlloc=(\d+)", info).group(1))
    assert idle > 0, f"{node} has no idle CPU to take: {info}"
    out = slurm_cmd("sbatch", "--parsable", f"--partition={partition}", f"--nodelist={node}",
                    "--nodes=1", "--ntasks=1", f"--cpus-per-task={idle}", "--mem=100",
                    "--time=2", "--output=/dev/null", "--wrap", "sleep 120", user=user)
    assert out.returncode == 0, f"sbatch on {node} as {user}: {out.stderr}"
    job_id = int(out.stdout.strip().split(";")[0])
    state = [""]

    def in_state(*wanted: str) -> bool:
        out = slurm_cmd("squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%T")
        state[0] = out.stdout.strip()
        return state[0] in wanted

    try:
        poll_until(lambda: in_state("RUNNING"), f"job {job_id} taking {node}: expected "
                   "RUNNING", timeout, 0.5, last=lambda: state[0])
        yield job_id
    finally:
        slurm_cmd("scancel", str(job_id))
        # Gone from the node before the next test, which may kill slurmctld.
        poll_until(lambda: in_state("CANCELLED", "COMPLETED", ""), f"job {job_id} ended",
                   timeout, 0.5, last=lambda: state[0])


def slurmctld_log_since(offset: int) -> str:
    """What slurmctld logged after byte ``offset`` of its log (os.path.getsize before)."""
    with open(SLURMCTLD_LOG, encoding="utf-8", errors="replace") as fh:
        fh.seek(offset)
        return fh.read()


def teardown_killed(job_id: int, since: int) -> bool:
    """Did slurmctld kill job ``job_id``'s burst-buffer teardown (after log offset
    ``since``)? Slurm 24.11 may, for a job cancelled while PENDING after its stage-in: the
    cancel queues the teardown and then kills the job's running scripts, the just-started
    teardown among them, and never runs it again (docs/slurm.md)."""
    return f"teardown for JobId={job_id} terminated by slurmctld" in slurmctld_log_since(since)
