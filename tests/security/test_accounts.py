"""Accounts: who a job runs as (docs/security.md §8, threat-model rows of the Session
Manager and network clients).

The session orchestrator (127.0.0.1:8080, ``auth = none``: every caller is admin, the most
a Session Manager or a stolen token could be) is asked over real HTTP to reserve or launch
for root, the SlurmUser, system accounts, nobody and names with no account. Each request
gets 400 naming ``user``; nothing is stored, no Slurm job appears, bob's service is
unchanged. Impersonation runs against a second orchestrator with ``impersonate_users = no``.
"""

from __future__ import annotations

import os
import re
import uuid

import pytest

from tests.integration.minicluster import WFM_CONF
from tests.integration.orchestrator import Orchestrator
from tests.poll import poll_until

from .conftest import (
    BOB,
    devcluster_run,
    free_port,
    reserve_body,
    service_status,
    start_serve,
    stop_serve,
)

pytestmark = pytest.mark.integration


def name_for(user: str, kind: str) -> str:
    return f"{user}_{kind}_{uuid.uuid4().hex[:8]}"


def slurm_jobs_named(name: str) -> str:
    """Every job Slurm knows by that name (all states), as squeue prints them."""
    return devcluster_run("squeue", "-h", "-a", "-t", "all", "-n", name,
                          "-o", "%i %u %T").stdout.strip()


def assert_user_refused(code: int, answer: object, user: str, reason: str) -> None:
    assert code == 400, answer
    assert isinstance(answer, dict) and answer.get("field") == "user", answer
    assert f"{user!r}" in answer["message"] and reason in answer["message"], answer
    assert "uid >=" in answer["message"], answer  # the fix: an account with uid >= ...


def attempt(orchestrator, user: str, reason: str) -> None:
    """reserve and step/launch for ``user``: both 400 naming ``user`` and why; nothing
    stored, nothing submitted, no file written by a job."""
    service = name_for(user.replace("-", "_") or "x", "svc")
    code, answer = orchestrator.post("/ephemeralservice/reserve", reserve_body(
        service, user, token="placeholder"))  # noqa: S106 - not a secret
    assert_user_refused(code, answer, user, reason)
    assert orchestrator.get(f"/ephemeralservice/status/{service}") == (200, [])
    step = name_for(user.replace("-", "_") or "x", "step")
    marker = f"/tmp/{step}.ran"  # noqa: S108 - would be written by the job on a node
    code, answer = orchestrator.post("/step/launch", {
        "name": step, "user": user, "command": f"--wrap 'id > {marker}'"})
    assert_user_refused(code, answer, user, reason)
    code, answer = orchestrator.get(f"/step/status/{step}")
    assert code == 200 and answer == [], answer
    assert slurm_jobs_named(service) == "" and slurm_jobs_named(step) == ""
    assert not os.path.exists(marker)


def test_reserve_and_step_launch_as_root_are_refused(orchestrator, bob_things):
    """reserve and step/launch with ``"user": "root"``: 400 naming ``user`` ("is root (uid
    0)"); no job runs as uid 0; bob's service untouched."""
    before = bob_things()
    attempt(orchestrator, "root", "is root (uid 0)")
    assert bob_things() == before


def test_the_slurm_user_is_refused(orchestrator, bob_things):
    """``user`` = slurm (the SlurmUser of the mini-cluster): 400 naming ``user`` and
    ``slurm_user``."""
    before = bob_things()
    attempt(orchestrator, "slurm", "is the SlurmUser (slurm_user)")
    assert bob_things() == before


@pytest.mark.parametrize(("user", "reason"), [
    ("daemon", "is a system account (uid 1, below min_user_uid)"),
    ("www-data", "is a system account (uid 33, below min_user_uid)"),
    ("nobody", "is nobody (uid 65534"),
])
def test_system_accounts_and_nobody_are_refused(orchestrator, bob_things, user, reason):
    """A system account (uid < min_user_uid = 1000) or nobody: 400 naming ``user``."""
    before = bob_things()
    attempt(orchestrator, user, reason)
    assert bob_things() == before


def test_a_name_without_an_account_is_refused(orchestrator, bob_things):
    """A name no account has (``mallory``): 400 naming ``user``, nothing recorded."""
    before = bob_things()
    attempt(orchestrator, "mallory", "no account named 'mallory' on this host")
    assert bob_things() == before


# --- impersonation: a second orchestrator with impersonate_users = no -----------------


def config_without_impersonation(directory: str, port: int) -> str:
    """The mini-cluster's wfm.conf on ``port``, its own state, ``impersonate_users = no``."""
    lines = []
    with open(WFM_CONF, encoding="utf-8") as fh:
        for line in fh:
            key = line.split("=", 1)[0].strip()
            if key == "listen":
                line = f"listen = 127.0.0.1:{port}\n"
            elif key == "state_db":
                line = f"state_db = {directory}/state/state.db\n"
            elif key == "slurm_token_file":
                token = os.path.join(os.path.dirname(WFM_CONF), line.split("=", 1)[1].strip())
                line = f"slurm_token_file = {token}\n"
            elif key == "impersonate_users":
                line = "impersonate_users = no\n"
            lines.append(line)
    path = os.path.join(directory, "wfm.conf")
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(lines)
    return path


def test_without_impersonation_nothing_runs_as_bob(slurm_cluster, open_dir, bob_things):
    """Without bob's token (the Session Manager's placeholder, or none as step/launch sends),
    nothing is submitted as bob with the SlurmUser token unless ``impersonate_users = yes``:
    the service's status and the step's detail name the setting, Slurm has no such job."""
    port = free_port()
    server = start_serve(open_dir, config_without_impersonation(open_dir, port), port)
    try:
        other = Orchestrator(server.proc, f"http://127.0.0.1:{port}", server.config,
                             f"{open_dir}/state/state.db", server.log_path)
        before = bob_things()
        service = name_for(BOB, "placeholder")
        body = reserve_body(service, BOB, token="placeholder")  # noqa: S106 - not a secret
        code, answer = other.post("/ephemeralservice/reserve", body)
        assert code == 200, answer

        def names_the_setting() -> dict | None:
            st = service_status(other, service)
            return st if "impersonate_users" in st["detail"] else None

        st = poll_until(names_the_setting, f"service {service}: detail naming "
                        "impersonate_users", 60, 0.3,
                        last=lambda: f"{service_status(other, service)}\n{server.log()[-2000:]}")
        assert st["status"] != "ALLOCATED", st
        step = name_for(BOB, "step")
        code, answer = other.post("/step/launch", {"name": step, "user": BOB,
                                                   "command": "--wrap 'id'"})
        assert code == 200, answer

        def failed() -> dict | None:
            code, st = other.get(f"/step/status/{step}")
            return st if code == 200 and st["status"] == "FAILED" else None

        st = poll_until(failed, f"step {step} FAILED", 60, 0.3,
                        last=lambda: f"{other.get(f'/step/status/{step}')}\n"
                                     f"{server.log()[-2000:]}")
        assert "impersonate_users" in st["detail"], st
        assert slurm_jobs_named(service) == "" and slurm_jobs_named(step) == ""
        assert not re.search(r"submitted for bob with the SlurmUser token", server.log())
        other.delete(f"/ephemeralservice/release/{service}")
        assert bob_things() == before
    finally:
        stop_serve(server)
