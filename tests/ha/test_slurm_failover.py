"""The HA cluster bound to the Slurm mini-cluster (issue #20, item 4): the leading
orchestrator lost while its services' jobs are being submitted and started (kill -9, or
SIGSTOP past its lease then SIGCONT). The standby takes over; at every moment at most one
live Slurm job carries a reservation's tag (squeue, by the job's comment), every
acknowledged reservation is on the new leader, every service reaches ALLOCATED there (the
plugin binds its job through the new leader) and no datanode core is granted twice.

Needs both shared clusters (the fixture ``slurm_ha``, tests/ha/conftest.py): it takes the
mini-cluster's lock (/tmp/wfm-it.lock) after the
HA lock its caller holds, unless the command running pytest holds it already. For its
duration it brings the HA cluster up fresh and bound to Slurm (WFM_HACLUSTER_SLURM=yes)
and points the burst-buffer plugin at the two HA orchestrators (their configuration file,
read at every call); it puts both back as it found them, the HA cluster Resource-Manager
only and purged. Skipped only when the mini-cluster is truly absent.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from types import SimpleNamespace

import pytest

from tests.integration.minicluster import slurm_cmd, user_token
from tests.poll import poll, poll_until
from wfm_orchestrator.service_job import TAG_PREFIX

from .cluster import comm, status, up
from .test_leader_failover import CRASH_BOUND, LEASE_TTL, V, call, check_state, role

# ha: the local HA cluster; integration: the Slurm mini-cluster (`-m "not integration"`
# never selects it).
pytestmark = [pytest.mark.ha, pytest.mark.integration]

SERVICES = 4  # small SBBs of 2 cores: the mini-cluster's two datanodes hold 16
# Slurm's states of a job that is, or will be, running.
LIVE = {"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "RESIZING"}


def send(urls: list[str], method: str, path: str, body: dict | None = None,
         timeout: float = 60) -> tuple[int, object]:
    """As a client with both URLs: the next one on no answer or a 503, rounds until one
    answers (0 after ``timeout`` s)."""
    answer: list[tuple[int, object]] = []

    def answered() -> bool:
        for url in urls:
            # Short: a paused leader accepts the connection and never answers.
            code, doc = call(url, method, path, body, timeout=3)
            if code and code != 503:
                answer.append((code, doc))
                return True
        return False

    return answer[0] if poll(answered, timeout, interval=0.2) else (0, None)


class JobWatch(threading.Thread):
    """Reads squeue every half second: for each service of ``prefix``, the live jobs
    carrying its tag at each read; ``overlaps`` records every read that saw two."""

    def __init__(self, prefix: str):
        super().__init__(daemon=True, name="squeue-watch")
        self.prefix = f"{TAG_PREFIX}{prefix}"
        self.jobs: dict[str, set[str]] = {}  # service -> every job id seen live
        self.overlaps: list[tuple[str, list[str]]] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def read(self) -> dict[str, list[str]]:
        out = slurm_cmd("squeue", "-h", "-o", "%i|%T|%k", timeout=30)
        if out.returncode != 0:
            self.errors.append(out.stderr.strip())
            return {}
        live: dict[str, list[str]] = {}
        for line in out.stdout.splitlines():
            job_id, state, comment = (line.split("|", 2) + ["", ""])[:3]
            if comment.startswith(self.prefix) and state in LIVE:
                name = comment[len(TAG_PREFIX):].split(":", 1)[0]
                live.setdefault(name, []).append(job_id)
        return live

    def run(self) -> None:
        while not self.stopping.is_set():
            for name, ids in self.read().items():
                self.jobs.setdefault(name, set()).update(ids)
                if len(ids) > 1:
                    self.overlaps.append((name, ids))
            self.stopping.wait(0.5)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=60)
        assert not self.is_alive(), "the squeue reader did not stop"


def service_state(urls: list[str], name: str) -> str | None:
    code, doc = send(urls, "GET", f"{V}/ephemeralservice/status/{name}")
    return doc.get("status") if code == 200 and isinstance(doc, dict) else None


def leader_and_standby() -> tuple[dict, dict]:
    roles = {o["role"]: o for o in status()["orchestrators"]}
    assert set(roles) == {"leader", "standby"}, roles
    return roles["leader"], roles["standby"]


# (signal, when): kill -9 once the reservations are acknowledged (their jobs about to be
# submitted) or once Slurm shows the first job (the others on their way, the first one
# starting); SIGSTOP once Slurm shows the first job, SIGCONT once the standby leads (the
# deposed leader resumes in the middle of its cycle, and must stop without a submission).
@pytest.mark.parametrize("fault,moment", [("kill", "acknowledged"), ("kill", "in_slurm"),
                                          ("stop", "in_slurm")])
def test_a_leader_lost_while_it_starts_jobs_leaves_one_job_per_reservation(
        slurm_ha, fault, moment):
    up(slurm="yes")  # the instance an earlier test stopped comes back, as the standby
    leader, standby = leader_and_standby()
    urls = [leader["url"], standby["url"]]
    prefix = f"alice_ha{secrets.token_hex(3)}"
    names = [f"{prefix}_{i}_sbb" for i in range(SERVICES)]
    token = user_token("alice")
    watch = JobWatch(prefix)
    watch.start()
    reserved: dict[str, float] = {}
    try:
        for name in names:
            code, doc = send(urls, "POST", f"{V}/ephemeralservice/reserve", {
                "name": name, "user": "alice", "user_slurm_token": token, "type": "SBB",
                "attributes": {"flavor": "small", "targets": ["/nonexistent/*"]}})
            assert code == 200, (code, doc)
            reserved[name] = time.monotonic()
        if moment == "in_slurm":
            poll_until(lambda: watch.jobs, "the leader submits a service's job", 60,
                       interval=0.1, last=lambda: watch.errors[-1:])
        lost = time.monotonic()
        os.kill(leader["pid"], signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
        in_slurm = len(watch.jobs)
        try:
            poll_until(lambda: role(standby["url"]) == "leader", "the standby leads",
                       CRASH_BOUND + 5)
            took = time.monotonic() - lost
        finally:
            if fault == "stop":
                os.kill(leader["pid"], signal.SIGCONT)
        if fault == "stop":
            poll_until(lambda: comm(leader["pid"]) is None, "the deposed leader stops",
                       LEASE_TTL)
        states: dict[str, str | None] = {}

        def all_allocated() -> bool:
            states.update({n: service_state(urls, n) for n in names})
            return all(s == "ALLOCATED" for s in states.values())

        poll_until(all_allocated, "every service ALLOCATED on the new leader", 180,
                   interval=1, last=lambda: states)
        allocated = time.monotonic() - lost
        # A duplicate the new leader would cancel shows up within a few of its cycles
        # (reconcile_interval, 2 s): watched a little longer, nothing expected.
        poll(lambda: watch.overlaps, timeout=6, interval=0.5)
    finally:
        watch.stop()
    print(f"\n{fault} of the leader with {in_slurm} of {SERVICES} jobs in Slurm: the "
          f"standby led {took:.1f} s later, every service ALLOCATED after {allocated:.1f} s; "
          f"jobs seen per service {sorted(len(j) for j in watch.jobs.values())}")
    assert not watch.overlaps, f"two live jobs for one reservation: {watch.overlaps[:5]}"
    assert set(watch.jobs) == set(names), watch.jobs
    assert took <= CRASH_BOUND
    check_state(standby["url"], SimpleNamespace(reserved=reserved, released=set()))
    for name in names:
        code, _ = send(urls, "DELETE", f"{V}/ephemeralservice/release/{name}")
        assert code == 200, (name, code)
    poll_until(lambda: not JobWatch(prefix).read(), "the services' jobs end", 120,
               interval=1)
