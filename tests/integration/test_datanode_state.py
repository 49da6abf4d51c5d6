"""Slurm's state of each datanode on the mini-cluster (#19 item 2): drained or DOWN in
Slurm -> no new placement there; resumed -> the queue is admitted; a service on a node set
DOWN says so and ends as docs/operations.md ("A datanode goes down") says.

The session orchestrator reads Slurm's nodes at every cycle (node_poll_interval = 1,
orchestrator.SESSION_SETTINGS). Every test leaves dn2 resumed: the cluster is shared by
the whole suite.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Iterator

import pytest

from tests.poll import poll_until

from .minicluster import RUN_DIR, slurm_cmd, user_token, wait_for_state
from .test_services import reserve, wait_status

pytestmark = pytest.mark.integration
POLLS = 30  # s: a few of the orchestrator's cycles (reconcile_interval 2 s) and then some


def unique(prefix: str) -> str:
    return f"alice_{prefix}_{uuid.uuid4().hex[:8]}"


def resources(orch, node: str) -> dict:
    code, res = orch.get(f"/server/resources/{node}")
    assert code == 200, res
    return res


def wait_node(orch, node: str, state: str) -> dict:
    """server/resources of ``node`` once its state is ``state``."""
    seen: list[dict | None] = [None]

    def reached() -> dict | None:
        seen[0] = resources(orch, node)
        return seen[0] if seen[0]["state"] == state else None

    return poll_until(reached, f"datanode {node}: expected state {state}", POLLS, 0.5,
                      last=lambda: f"{seen[0]}\n{orch.log()[-2000:]}")


def wait_detail(orch, name: str, words: str, timeout: float = POLLS) -> dict:
    """The service's status once its detail holds ``words``."""
    seen: list[dict | None] = [None]

    def reached() -> dict | None:
        code, seen[0] = orch.get(f"/ephemeralservice/status/{name}")
        assert code == 200, seen[0]
        return seen[0] if words in seen[0]["detail"] else None

    return poll_until(reached, f"service {name}: expected {words!r} in its detail", timeout,
                      0.5, last=lambda: f"{seen[0]}\n{orch.log()[-2000:]}")


def placed_on(orch, name: str) -> list[str]:
    code, rec = orch.request("GET", f"/admin/reservations/{name}", prefix="")
    assert code == 200, rec
    return rec["datanodes"]


def slurm_state(node: str) -> str:
    out = slurm_cmd("scontrol", "show", "node", node)
    assert out.returncode == 0, out.stderr
    return out.stdout.split("State=", 1)[1].split()[0]


def released(orch, *names: str) -> None:
    """Release each service that was reserved and wait until it is STOPPED: the next test
    module finds every core free again."""
    for name in names:
        orch.delete(f"/ephemeralservice/release/{name}")
    for name in names:
        if orch.get(f"/ephemeralservice/status/{name}")[0] == 200:
            wait_status(orch, name, "STOPPED", timeout=150)


def set_node(node: str, state: str, reason: str) -> None:
    out = slurm_cmd("scontrol", "update", f"nodename={node}", f"state={state}",
                    f"reason={reason}")
    assert out.returncode == 0, out.stderr


def resumed(node: str) -> bool:
    """Resume ``node`` unless it is up. Slurm 22.05 refuses a resume ("Invalid node state
    specified") of some nodes just set DOWN or FAIL until its next ping: try again."""
    if not any(w in slurm_state(node) for w in ("DOWN", "DRAIN", "FAIL", "NOT_RESP")):
        return True
    slurm_cmd("scontrol", "update", f"nodename={node}", "state=resume")
    return False


@contextlib.contextmanager
def slurm_node(node: str, state: str, reason: str) -> Iterator[None]:
    """``scontrol update nodename=<node> state=<state> reason=...``, the node resumed at
    the end whatever happened."""
    set_node(node, state, reason)
    try:
        yield
    finally:
        poll_until(lambda: resumed(node), f"{node} resumed in Slurm", 120, 2,
                   last=lambda: slurm_state(node))


@contextlib.contextmanager
def silent_slurmd(node: str) -> Iterator[None]:
    """The node's slurmd stops answering (SIGSTOP), as a dead node's would; its jobs' own
    processes go on. Answering again (SIGCONT) and resumed in Slurm at the end."""
    with open(os.path.join(RUN_DIR, f"slurmd-{node}.pid")) as fh:
        pid = int(fh.read().strip())
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
        poll_until(lambda: resumed(node), f"{node} resumed in Slurm", 120, 2,
                   last=lambda: slurm_state(node))


def test_a_datanode_drained_in_slurm_takes_nothing_new_until_resumed(orchestrator,
                                                                     slurm_cluster):
    """DRAIN in Slurm -> server/resources says down with Slurm's reason; a reservation
    preferring dn2 lands on dn1; one that needs dn2 queues; resume -> it is admitted and
    its service runs on both."""
    one, both = unique("one"), unique("both")
    try:
        with slurm_node("dn2", "drain", "wfm test: disk swap"):
            res = wait_node(orchestrator, "dn2", "down")
            assert res["reason"].startswith("Slurm: ")
            assert res["reason"].endswith("+DRAIN (wfm test: disk swap)"), res
            reserve(orchestrator, one, location=["loc2"])  # dn2 first, then its neighbour
            assert placed_on(orchestrator, one) == ["dn1"]
            code, answer = orchestrator.post("/ephemeralservice/reserve", {
                "name": both, "user": "alice", "user_slurm_token": user_token("alice"),
                "type": "SBB",
                "servers": 2, "attributes": {"flavor": "small", "targets": ["/none/*"]}})
            assert code == 200, answer
            status = wait_status(orchestrator, both, "STAGINGIN")
            assert status["detail"].startswith("queued at position 1"), status
        assert wait_node(orchestrator, "dn2", "up")["reason"] == ""
        assert sorted(placed_on(orchestrator, both)) == ["dn1", "dn2"]
    finally:
        released(orchestrator, one, both)


def test_a_service_on_a_datanode_gone_down_says_so_and_ends_as_documented(
        orchestrator, slurm_cluster, slurm_version, client):
    """dn2's slurmd stops answering under a running service: once Slurm marks the node
    NOT_RESPONDING (its ping fails, up to a minute) the status says the node is down while
    the job still runs; then the node is set DOWN: Slurm 24.11 ends the job NODE_FAIL and
    its burst-buffer teardown releases the reservation, whose STOPPED detail keeps why;
    Slurm 22.05 requeues the job (v0.0.38 ignores requeue=false), which waits for its node
    holding the reservation. Nothing new goes to dn2 meanwhile."""
    name = unique("down")
    reserve(orchestrator, name, location=["loc2"])
    wait_status(orchestrator, name, "ALLOCATED")
    assert placed_on(orchestrator, name) == ["dn2"]
    [job] = [j for j in client.jobs() if j.name == name and j.is_active]
    try:
        with silent_slurmd("dn2"):
            # Slurm pings every SlurmdTimeout/3 (20 s here) and waits MessageTimeout (10 s).
            status = wait_detail(orchestrator, name, "datanode dn2 is down in Slurm: ",
                                 timeout=150)
            assert status["status"] == "ALLOCATED", status  # the job runs on meanwhile
            assert status["detail"].endswith("+NOT_RESPONDING"), status
            set_node("dn2", "down", "wfm test: fan")
            if slurm_version == "24.11":
                status = wait_status(orchestrator, name, "STOPPED")
                assert "datanode dn2 was down in Slurm: " in status["detail"], status
                assert client.job(job.job_id).state == "NODE_FAIL"
            else:
                requeued = wait_for_state(client, job.job_id, ["PENDING"])
                assert requeued.nodes == ()
                status = wait_detail(orchestrator, name, "is down in Slurm: DOWN+NOT_RESPONDING "
                                     "(wfm test: fan)")
                assert status["status"] == "STAGEDIN", status  # bound, waiting to run again
                assert placed_on(orchestrator, name) == ["dn2"]  # the reservation is kept
            assert resources(orchestrator, "dn2")["state"] == "down"
            other = unique("after")
            try:
                reserve(orchestrator, other, location=["loc2"])
                assert placed_on(orchestrator, other) == ["dn1"]
            finally:
                released(orchestrator, other)
        wait_node(orchestrator, "dn2", "up")
    finally:
        released(orchestrator, name)


def test_the_administrators_drain_keeps_services_off_a_datanode(orchestrator,
                                                                slurm_cluster):
    """POST /admin/datanodes/dn2/drain on the mini-cluster: a service preferring dn2 runs on
    dn1; resume gives dn2 back."""
    name = unique("adm")
    code, answer = orchestrator.request("POST", "/admin/datanodes/dn2/drain",
                                        {"reason": "wfm test: admin drain"}, prefix="")
    try:
        assert code == 200 and answer["state"] == "drained", answer
        reserve(orchestrator, name, location=["loc2"])
        assert placed_on(orchestrator, name) == ["dn1"]
        assert "dn1" in wait_status(orchestrator, name, "ALLOCATED")["detail"]
    finally:
        code, answer = orchestrator.request("POST", "/admin/datanodes/dn2/resume", prefix="")
        assert code == 200 and answer["state"] == "up", answer
        released(orchestrator, name)
