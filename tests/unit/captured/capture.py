#!/usr/bin/env python3
"""Capture real slurmrestd responses from the mini-cluster, one directory per API version.

Run as root from the repository, with the mini-cluster up (deploy/devcluster up
[--slurm 24.11]): ``PYTHONPATH=src python3 tests/unit/captured/capture.py [VERSION ...]``.
Without versions, every version of ours the running slurmrestd serves is captured
(22.05: v0.0.38; 24.11: v0.0.40, v0.0.41, v0.0.42). ``--ctld-down`` then stops
slurmctld (by its devcluster pid file) and captures what reads and pings answer
without it: bring the cluster up again afterwards. ``--nodes`` captures only the node
states (``nodes_*.json``, ``jobs_node_down.json``): it drains, downs, fails and stops
(SIGSTOP) the datanodes' slurmd in turn, about two minutes, and resumes them at the end.

Each file is tests/unit/captured/<version>/<name>.json, ``{"request": ..., "status": N,
"body": <JSON or null>, "text": <raw if not JSON>, "seconds": S}`` with tokens removed.
The unit tests of the readers use them; rerun after a Slurm upgrade.
"""

import json
import os
import signal
import subprocess
import sys
import time

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "..", "..", "..")
sys.path.insert(0, os.path.join(REPO, "src"))
sys.path.insert(0, REPO)
from tests.poll import poll_until  # noqa: E402

from wfm_orchestrator.config import load_config  # noqa: E402
from wfm_orchestrator.slurm.jobs import Dependency, JobSpec  # noqa: E402
from wfm_orchestrator.slurm.versions import SUPPORTED, build_submit_body, dialect  # noqa: E402

CONF = load_config(os.path.join(REPO, "wfm.conf"))
BAD = "garbage"  # noqa: S105 - a deliberately bad token
CTLD_PID = "/run/wfm-devcluster/slurmctld.pid"


def token() -> str:
    text = open(CONF.slurm_token_file).read().strip()
    return text.split("=", 1)[1] if text.startswith("SLURM_JWT=") else text


class Capture:
    def __init__(self, version: str):
        self.version = version
        self.dir = os.path.join(HERE, version)
        os.makedirs(self.dir, exist_ok=True)
        self.token = token()

    def call(self, name, method, path, user="slurm", tok=None, body=None, params=None,
             versioned=True):
        headers = {}
        if user is not None:
            headers = {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": tok or self.token}
        url = CONF.slurmrestd_url + (f"/slurm/{self.version}" if versioned else "") + path
        started = time.monotonic()
        r = requests.request(method, url, headers=headers, json=body, params=params, timeout=30)
        try:
            parsed, text = r.json(), None
        except ValueError:
            parsed, text = None, r.text
        if name:
            with open(os.path.join(self.dir, name + ".json"), "w") as fh:
                json.dump({"request": f"{method} {path}", "status": r.status_code,
                           "body": parsed, "text": text,
                           "seconds": round(time.monotonic() - started, 1)},
                          fh, indent=1, sort_keys=True)
                fh.write("\n")
        return r.status_code, parsed

    def submit(self, name, spec, user="alice"):
        return self.call(name, "POST", "/job/submit", user=user,
                         body=build_submit_body(spec, self.version))[1]

    def touch(self):
        """A job updated with its own comment (stage_in_nudge.py), and an unknown one."""
        v = self.version.replace(".", "")
        job = self.submit(None, JobSpec(name=f"cap_touch_{v}", command=["/bin/sleep", "60"],
                                        partition="compute", comment="wfm:capture"))["job_id"]
        self.call("update_ok", "POST", f"/job/{job}", body={"comment": "wfm:capture"})
        self.call("update_unknown", "POST", "/job/999999", body={"comment": "x"})
        self.call(None, "DELETE", f"/job/{job}", params={"signal": "SIGKILL"})

    def run(self):
        v = self.version.replace(".", "")
        self.call("ping_ok", "GET", "/ping")
        ok = self.submit("submit_ok", JobSpec(name=f"cap_ok_{v}", command=["/bin/true"],
                                              partition="compute",
                                              comment="wfm:capture"))["job_id"]
        fail = self.submit("submit_ok_fail", JobSpec(
            name=f"cap_fail_{v}", command=["/bin/sh", "-c", "exit 3"],
            partition="compute"))["job_id"]
        run = self.submit("submit_ok_run", JobSpec(
            name=f"cap_run_{v}", command=["/bin/sleep", "300"], partition="data",
            nodes=["dn1", "dn2"], cpus_per_node=4, memory_per_node=1000))["job_id"]
        pend = self.submit("submit_ok_pend", JobSpec(
            name=f"cap_pend_{v}", command=["/bin/true"], partition="compute",
            dependencies=[Dependency("afterok", (run,))]))["job_id"]
        kill = self.submit("submit_ok_kill", JobSpec(
            name=f"cap_kill_{v}", command=["/bin/sleep", "300"], partition="compute"))["job_id"]
        step = self.submit("submit_ok_step", JobSpec(
            name=f"cap_step_{v}", command=["/bin/sleep", "300"], partition="compute",
            tasks=2, exclusive=True, exclude=["cn2"], time_limit=5, memory_per_cpu=100,
            dependencies=[Dependency("afterany", (run,))]))["job_id"]
        self.submit("submit_bad_partition", JobSpec(name="cap_bad", command=["/bin/true"],
                                                    partition="nosuch"))
        self.submit("submit_bad_node", JobSpec(name="cap_bad", command=["/bin/true"],
                                               partition="compute", nodes=["dn1"]))
        time.sleep(3)
        self.call("cancel_ok", "DELETE", f"/job/{kill}", params={"signal": "SIGKILL"})
        self.call("cancel_pending", "DELETE", f"/job/{pend}", params={"signal": "SIGKILL"})
        self.call("cancel_unknown", "DELETE", "/job/999999", params={"signal": "SIGTERM"})
        time.sleep(2)
        self.call("cancel_finished", "DELETE", f"/job/{ok}", params={"signal": "SIGTERM"})
        self.call("jobs_mixed", "GET", "/jobs")
        self.call("job_one", "GET", f"/job/{run}")
        self.call("job_step", "GET", f"/job/{step}")
        self.call("job_unknown", "GET", "/job/999999")
        self.call("auth_garbage_jobs", "GET", "/jobs", tok=BAD)
        self.call("auth_garbage_ping", "GET", "/ping", tok=BAD)
        self.call("auth_garbage_submit", "POST", "/job/submit", user="alice", tok=BAD,
                  body=build_submit_body(JobSpec(name="x", command=["/bin/true"],
                                                 partition="compute"), self.version))
        self.call("auth_no_headers", "GET", "/jobs", user=None)
        short = subprocess.run([os.path.join(REPO, "deploy", "devcluster"), "run", "scontrol",
                                "token", "username=alice", "lifespan=1"],
                               capture_output=True, text=True, check=True).stdout.strip()
        short = short.split("=", 1)[1]
        self.call("auth_wrong_user", "GET", "/jobs", user="bob", tok=short)
        time.sleep(3)
        self.call("auth_expired", "GET", "/jobs", user="alice", tok=short)
        status, doc = self.call(None, "GET", "/openapi/v3", versioned=False)
        with open(os.path.join(self.dir, "openapi_paths.json"), "w") as fh:
            # Only the paths' names of /openapi/v3 (the whole document is ~650 kB on 24.11).
            json.dump({"request": "GET /openapi/v3 (paths only)", "status": status,
                       "body": {"paths": {p: {} for p in sorted((doc or {}).get("paths", {}))}},
                       "text": None}, fh, indent=1, sort_keys=True)
            fh.write("\n")
        for jid in (run, pend, fail, step):
            self.call(None, "DELETE", f"/job/{jid}", params={"signal": "SIGKILL"})


def served() -> list[str]:
    tok = token()
    found = []
    for v in SUPPORTED:
        r = requests.get(f"{CONF.slurmrestd_url}/slurm/{v}/ping", timeout=10,
                         headers={"X-SLURM-USER-NAME": CONF.slurm_user, "X-SLURM-USER-TOKEN": tok})
        if r.status_code != 404:
            found.append(v)
    return found


def stop_slurmctld() -> None:
    pid = int(open(CTLD_PID).read().strip())
    os.kill(pid, signal.SIGTERM)
    poll_until(lambda: not os.path.exists(f"/proc/{pid}"), f"slurmctld {pid} stopping")


def scontrol(*args: str) -> str:
    out = subprocess.run([os.path.join(REPO, "deploy", "devcluster"), "run", "scontrol", *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"scontrol {' '.join(args)}: {out.stderr}"
    return out.stdout


def resume(node: str, slurm: str) -> None:
    """``scontrol update state=resume`` until the node is up. 22.05 refuses it ("Invalid node
    state specified") while the node is NOT_RESPONDING, as it is right after state=down or
    fail, until its next ping; a node DOWN for not responding is pinged no more, so its
    slurmd is restarted (deploy/devcluster up --slurm <slurm>): registering brings it back
    (ReturnToService=2)."""
    def up() -> bool:
        if not any(w in node_state(node) for w in ("DOWN", "DRAIN", "FAIL", "NOT_RESP")):
            return True
        subprocess.run([os.path.join(REPO, "deploy", "devcluster"), "run", "scontrol",
                        "update", f"nodename={node}", "state=resume"],
                       capture_output=True, timeout=60)
        return False

    try:
        poll_until(up, f"{node} resumed", 60, interval=3)
    except AssertionError:
        pid = int(open(f"/run/wfm-devcluster/slurmd-{node}.pid").read().strip())
        os.kill(pid, signal.SIGTERM)
        poll_until(lambda: not os.path.exists(f"/proc/{pid}"), f"slurmd {node} stopping")
        subprocess.run([os.path.join(REPO, "deploy", "devcluster"), "up", "--slurm", slurm],
                       check=True, capture_output=True, timeout=600)
        poll_until(up, f"{node} resumed after its slurmd restarted", 60, interval=3)


def node_state(node: str) -> str:
    """``State=...`` of ``scontrol show node``, e.g. ``IDLE+DRAIN``."""
    text = scontrol("show", "node", node)
    return text.split("State=", 1)[1].split()[0]


def capture_nodes(versions: list[str]) -> None:
    """Every node state the orchestrator reads, for each version, on dn1 and dn2."""
    caps = [Capture(v) for v in versions]

    def snap(name: str) -> None:
        for c in caps:
            c.call(name, "GET", "/nodes")

    first = caps[0]
    slurm = dialect(first.version).slurm
    job = first.submit(None, JobSpec(name="cap_node_job", command=["/bin/sleep", "600"],
                                     partition="data", nodes=["dn2"], cpus_per_node=4,
                                     memory_per_node=1000))["job_id"]
    slurmd = int(open("/run/wfm-devcluster/slurmd-dn2.pid").read().strip())
    try:
        poll_until(lambda: node_state("dn2").startswith("MIXED"), "dn2 MIXED (job running)")
        snap("nodes_up")  # dn1 IDLE, dn2 MIXED
        scontrol("update", "nodename=dn1", "state=drain", "reason=capture: disk swap")
        scontrol("update", "nodename=dn2", "state=drain", "reason=capture: draining")
        snap("nodes_drain")  # dn1 IDLE+DRAIN (drained), dn2 MIXED+DRAIN (draining)
        resume("dn1", slurm)
        resume("dn2", slurm)
        scontrol("update", "nodename=dn1", "state=fail", "reason=capture: failing")
        scontrol("update", "nodename=dn2", "state=down", "reason=capture: fan")
        snap("nodes_down")  # dn1 IDLE+FAIL, dn2 DOWN (its job killed, or requeued: 22.05)
        for c in caps:
            c.call("jobs_node_down", "GET", "/jobs")
        resume("dn1", slurm)
        resume("dn2", slurm)
        poll_until(lambda: node_state("dn2") == "IDLE", "dn2 IDLE after resume", 60)
        os.kill(slurmd, signal.SIGSTOP)  # slurmd stops answering slurmctld's pings
        poll_until(lambda: "NOT_RESPONDING" in node_state("dn2"), "dn2 NOT_RESPONDING", 180,
                   interval=2)
        snap("nodes_not_responding")
        poll_until(lambda: node_state("dn2").startswith("DOWN"), "dn2 DOWN", 180, interval=2)
        snap("nodes_down_not_responding")
    finally:
        os.kill(slurmd, signal.SIGCONT)
        first.call(None, "DELETE", f"/job/{job}", params={"signal": "SIGKILL"})
        for node in ("dn1", "dn2"):
            resume(node, slurm)


def main(argv: list[str]) -> None:
    ctld_down = "--ctld-down" in argv
    versions = [a for a in argv if not a.startswith("--")] or served()
    if "--nodes" in argv:
        capture_nodes(versions)
        return
    if "--touch" in argv:
        for v in versions:
            Capture(v).touch()
        return
    for v in versions:
        print(f"capturing {v}", flush=True)
        Capture(v).run()
    if ctld_down:
        stop_slurmctld()
        for v in versions:
            c = Capture(v)
            c.call("ctld_down_jobs", "GET", "/jobs")
            c.call("ctld_down_ping", "GET", "/ping")


if __name__ == "__main__":
    main(sys.argv[1:])
