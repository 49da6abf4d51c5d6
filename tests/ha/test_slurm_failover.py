"""The HA cluster bound to the Slurm mini-cluster (issue #20, item 4): kill -9 of the leading
orchestrator while its services' jobs are being submitted and started. The standby takes
over; at every moment at most one live Slurm job carries a reservation's tag, every
acknowledged reservation is on the new leader, every service reaches ALLOCATED there and
no datanode core is granted twice.

Needs both shared clusters: it takes the mini-cluster's lock (/tmp/wfm-it.lock) after the
HA lock its caller holds, unless the command running pytest holds it already. For its
duration it brings the HA cluster up fresh and bound to Slurm (WFM_HACLUSTER_SLURM=yes)
and points the burst-buffer plugin at the two HA orchestrators (their configuration file,
read at every call); it puts both back as it found them, the HA cluster Resource-Manager
only and purged. Skipped only when the mini-cluster is truly absent.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from types import SimpleNamespace

import pytest

from tests.integration.minicluster import RUN_DIR, cluster_up, slurm_cmd, user_token
from tests.poll import poll, poll_until
from wfm_orchestrator.service_job import TAG_PREFIX

from .cluster import hacluster, minicluster_lock, status, up
from .test_leader_failover import LEASE_TTL, TAKEOVER_BOUND, V, call, check_state, role

pytestmark = pytest.mark.ha

SERVICES = 4  # small SBBs of 2 cores: the mini-cluster's two datanodes hold 16
# Slurm's states of a job that is, or will be, running.
LIVE = {"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "RESIZING"}
# The plugin waits this long for a leader (docs/burst_buffer_plugin.md, retry_for):
# longer than a failover.
PLUGIN_RETRY_FOR = 60


def plugin_config_path() -> str:
    """The plugin's configuration file as the running slurmctld sees it (Slurm 24.11 runs in
    the mini-cluster's Debian 13 tree, which has its own /etc/slurm)."""
    with open(f"{RUN_DIR}/slurmctld.pid", encoding="ascii") as fh:
        pid = int(fh.read().split()[0])
    return f"/proc/{pid}/root/etc/slurm/burst_buffer_wfm.conf"


@contextlib.contextmanager
def plugin_pointed_at(urls: list[str]):
    """The plugin's orchestrator_url is ``urls`` (with a retry budget longer than a
    failover) for as long as the ``with`` lasts; the file is put back byte for byte."""
    path = plugin_config_path()
    with open(path, encoding="utf-8") as fh:
        original = fh.read()
    keys = ("orchestrator_url", "retry_for")
    lines = [line for line in original.splitlines(keepends=True)
             if line.split("=", 1)[0].strip() not in keys]
    lines += [f"orchestrator_url = {','.join(urls)}\n", f"retry_for = {PLUGIN_RETRY_FOR}\n"]
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(lines)
    try:
        yield
    finally:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(original)


def send(urls: list[str], method: str, path: str, body: dict | None = None,
         timeout: float = 60) -> tuple[int, object]:
    """As a client with both URLs: the next one on no answer or a 503, rounds until one
    answers (0 after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for url in urls:
            code, doc = call(url, method, path, body, timeout=10)
            if code and code != 503:
                return code, doc
        time.sleep(0.2)
    return 0, None


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
            up(slurm="yes")
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


def service_state(urls: list[str], name: str) -> str | None:
    code, doc = send(urls, "GET", f"{V}/ephemeralservice/status/{name}")
    return doc.get("status") if code == 200 and isinstance(doc, dict) else None


def test_kill9_of_the_leader_while_it_starts_jobs_leaves_one_job_per_reservation(slurm_ha):
    leaders = {o["role"]: o for o in status()["orchestrators"]}
    assert set(leaders) == {"leader", "standby"}, leaders
    leader, standby = leaders["leader"], leaders["standby"]
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
        # Killed while its jobs are on their way: once Slurm shows the first of them.
        poll_until(lambda: watch.jobs, "the leader submits a service's job", 60,
                   interval=0.2, last=lambda: watch.errors[-1:])
        killed = time.monotonic()
        os.kill(leader["pid"], 9)
        seen_at_kill = {n: set(ids) for n, ids in watch.jobs.items()}
        poll_until(lambda: role(standby["url"]) == "leader", "the standby leads",
                   LEASE_TTL + TAKEOVER_BOUND + 5)
        took = time.monotonic() - killed
        states: dict[str, str | None] = {}

        def all_allocated() -> bool:
            states.update({n: service_state(urls, n) for n in names})
            return all(s == "ALLOCATED" for s in states.values())

        poll_until(all_allocated, "every service ALLOCATED on the new leader", 180,
                   interval=1, last=lambda: states)
        allocated = time.monotonic() - killed
        # A duplicate the new leader would cancel shows up within a few of its cycles
        # (reconcile_interval, 2 s): watched a little longer, nothing expected.
        poll(lambda: watch.overlaps, timeout=6, interval=0.5)
    finally:
        watch.stop()
    print(f"\nkill -9 of the leader with {len(seen_at_kill)} of {SERVICES} jobs in Slurm: "
          f"the standby led {took:.1f} s later, every service ALLOCATED after "
          f"{allocated:.1f} s; jobs per service {({n: len(j) for n, j in watch.jobs.items()})}")
    assert not watch.overlaps, f"two live jobs for one reservation: {watch.overlaps[:5]}"
    assert set(watch.jobs) == set(names), watch.jobs
    check_state(standby["url"], SimpleNamespace(reserved=reserved, released=set()))
    for name in names:
        code, _ = send(urls, "DELETE", f"{V}/ephemeralservice/release/{name}")
        assert code == 200, (name, code)
    poll_until(lambda: not JobWatch(prefix).read(), "the services' jobs end", 120,
               interval=1)
