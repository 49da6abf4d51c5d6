#!/usr/bin/env python3
"""Capture real slurmrestd v0.0.38 responses from the mini-cluster (deploy/devcluster up).

Run as root from the repository: ``PYTHONPATH=src python3 tests/unit/captured/capture.py``.
Each file is ``{"request": ..., "status": N, "body": <JSON or null>, "text": <raw if not JSON>}``
with tokens removed. The unit tests of states.py read them; rerun after a Slurm upgrade.
"""

import json
import os
import subprocess
import sys
import time

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "src"))
from wfm_orchestrator.config import load_config  # noqa: E402
from wfm_orchestrator.slurm.jobs import Dependency, JobSpec, build_submit_body  # noqa: E402

CONF = load_config(os.path.join(HERE, "..", "..", "..", "wfm.conf"))
BASE = f"{CONF.slurmrestd_url}/slurm/{CONF.slurm_api_version}"
TOKEN = open(CONF.slurm_token_file).read().strip()
BAD = "garbage"  # noqa: S105 - a deliberately bad token


def call(name, method, path, user="slurm", token=TOKEN, body=None, params=None):
    headers = {}
    if user is not None:
        headers = {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": token}
    r = requests.request(method, BASE + path, headers=headers, json=body, params=params,
                         timeout=10)
    try:
        parsed, text = r.json(), None
    except ValueError:
        parsed, text = None, r.text
    with open(os.path.join(HERE, name + ".json"), "w") as fh:
        json.dump({"request": f"{method} {path}", "status": r.status_code, "body": parsed,
                   "text": text}, fh, indent=1, sort_keys=True)
        fh.write("\n")
    return r.status_code, parsed


def submit(name, spec, user="alice"):
    return call(name, "POST", "/job/submit", user=user, body=build_submit_body(spec))[1]


def main():
    call("ping_ok", "GET", "/ping")
    ok = submit("submit_ok", JobSpec(name="cap_ok", command=["/bin/true"], partition="compute",
                                     comment="wfm:capture"))["job_id"]
    fail = submit("submit_ok_fail", JobSpec(name="cap_fail", command=["/bin/sh", "-c", "exit 3"],
                                            partition="compute"))["job_id"]
    run = submit("submit_ok_run", JobSpec(name="cap_run", command=["/bin/sleep", "300"],
                                          partition="data", nodes=["dn1", "dn2"],
                                          cpus_per_node=4, memory_per_node=1000))["job_id"]
    pend = submit("submit_ok_pend", JobSpec(
        name="cap_pend", command=["/bin/true"], partition="compute",
        dependencies=[Dependency("afterok", (run,))]))["job_id"]
    kill = submit("submit_ok_kill", JobSpec(name="cap_kill", command=["/bin/sleep", "300"],
                                            partition="compute"))["job_id"]
    submit("submit_bad_partition", JobSpec(name="cap_bad", command=["/bin/true"],
                                           partition="nosuch"))
    submit("submit_bad_node", JobSpec(name="cap_bad", command=["/bin/true"],
                                      partition="compute", nodes=["dn1"]))
    time.sleep(3)
    call("cancel_ok", "DELETE", f"/job/{kill}", params={"signal": "SIGKILL"})
    call("cancel_unknown", "DELETE", "/job/999999", params={"signal": "SIGTERM"})
    time.sleep(2)
    call("cancel_finished", "DELETE", f"/job/{ok}", params={"signal": "SIGTERM"})
    call("jobs_mixed", "GET", "/jobs")
    call("job_one", "GET", f"/job/{run}")
    call("job_unknown", "GET", "/job/999999")
    call("auth_garbage_jobs", "GET", "/jobs", token=BAD)
    call("auth_garbage_ping", "GET", "/ping", token=BAD)
    call("auth_garbage_submit", "POST", "/job/submit", user="alice", token=BAD,
         body=build_submit_body(JobSpec(name="x", command=["/bin/true"], partition="compute")))
    call("auth_no_headers", "GET", "/jobs", user=None)
    short = subprocess.run(["scontrol", "token", "username=alice", "lifespan=1"],
                           capture_output=True, text=True, check=True).stdout.strip()
    short = short.split("=", 1)[1]
    call("auth_wrong_user", "GET", "/jobs", user="bob", token=short)
    time.sleep(3)
    call("auth_expired", "GET", "/jobs", user="alice", token=short)
    for jid in (run, pend, fail):
        requests.delete(f"{BASE}/job/{jid}", params={"signal": "SIGKILL"}, timeout=10,
                        headers={"X-SLURM-USER-NAME": "slurm", "X-SLURM-USER-TOKEN": TOKEN})


if __name__ == "__main__":
    main()
