"""The Session Manager's dialect on the plugin: another user's create, destroy, bbstat
listing; a reservation nobody claims (docs/security.md §13).

The Session Manager's own spec files and commands (tests/integration/session_manager.py),
run with real ``sbatch`` and ``scontrol`` as ordinary users of the mini-cluster; here bob
attacks alice's session.
"""

from __future__ import annotations

import os

import pytest

from tests.integration.orchestrator import start, stop
from tests.integration.session_manager import (
    EXPORT,
    bbstat,
    cancel,
    create_file,
    destroy_file,
    free,
    name,
    reserve_sbb,
    sbatch,
    sbb_line,
    slurm_version,
    sm_state,
    status,
    wait_held,
    wait_job,
    wait_status,
)

from .conftest import request, roles, uid_of

pytestmark = pytest.mark.integration


def test_a_create_for_a_name_the_user_did_not_reserve_is_refused(orchestrator, slurm_cluster):
    """bob's create_persistent naming alice's reservation: held, naming the rule; alice's
    reservation and service unchanged."""
    svc = name("mine")
    reserve_sbb(orchestrator, svc)
    wait_status(orchestrator, svc, "ALLOCATED")
    before = status(orchestrator, svc)
    job = sbatch("bob", "-J", "create", EXPORT, create_file(svc, sbb_line(svc)))
    try:
        info = wait_held(job)
        assert f"may not create service {svc}" in info["_raw"], info["_raw"]
        assert "only its own user's services" in info["_raw"]
    finally:
        cancel(job)
    after = status(orchestrator, svc)
    assert after["status"] == "ALLOCATED" and after["detail"] == before["detail"]
    orchestrator.delete(f"/ephemeralservice/release/{svc}")
    wait_status(orchestrator, svc, "STOPPED")


def test_a_destroy_of_another_users_service_is_refused(orchestrator, slurm_cluster):
    """bob's destroy_persistent naming alice's service: held, naming the rule; alice's
    service stays ALLOCATED."""
    svc = name("keep")
    reserve_sbb(orchestrator, svc)
    create = sbatch("alice", "-J", "create", EXPORT, create_file(svc, sbb_line(svc)))
    wait_job(create, {"COMPLETED"})
    job = sbatch("bob", "-J", "destroy", EXPORT, destroy_file(svc))
    try:
        info = wait_held(job)
        assert f"may not destroy service {svc}" in info["_raw"], info["_raw"]
    finally:
        cancel(job)
    assert status(orchestrator, svc)["status"] == "ALLOCATED"
    # bbstat: 22.05 does not say who asks, so bob sees alice's line (documented); 23.02+
    # says, and bob sees only his own.
    assert sm_state("bob", svc) == ("staged-in" if slurm_version() < (23, 2) else "STOPPED")
    assert sm_state("alice", svc) == "staged-in"
    destroy = sbatch("alice", "-J", "destroy", EXPORT, destroy_file(svc))
    wait_job(destroy, {"COMPLETED"})
    assert status(orchestrator, svc)["status"] == "STOPPED"


# --- unclaimed_timeout: a dedicated orchestrator ----------------------------------------


def test_an_unclaimed_reservation_is_released_after_unclaimed_timeout(orchestrator,
                                                                      slurm_cluster,
                                                                      tmp_path):
    """The SM reserved, then never created (it failed, or the user never came): with
    unclaimed_timeout = 10 the reservation is released, its service job cancelled, and
    its status says why. A dedicated orchestrator on another port (its service job's
    setup reaches the session's orchestrator and is held; that changes nothing here)."""
    port = 18080 + os.getpid() % 1000
    directory = str(tmp_path)
    server = start(directory, port=port, extra="unclaimed_timeout = 10\nteardown_grace = 5\n")
    try:
        svc = name("left")
        before = free(server)
        reserve_sbb(server, svc)
        assert status(server, svc)["status"] == "STAGINGIN"
        st = wait_status(server, svc, "STOPPED", timeout=90)
        assert st["detail"].startswith("released by the orchestrator: unclaimed_timeout "
                                       "(10 s) passed"), st
        assert "unclaimed_timeout (10 s)" in server.log()
        assert free(server) == before
    finally:
        stop(server)


def test_bob_lists_none_of_alices_services_with_bbstat(orchestrator, slurm_cluster):
    """``scontrol show bbstat`` as bob while alice's session runs: Slurm 23.02+ passes the
    asker's uid to the hook, which lists only his services."""
    if slurm_version() < (23, 2):
        pytest.skip("Slurm 22.05 does not tell slurm_bb_get_status who asks: bbstat lists "
                    "every live service there (not defended, docs/security.md §13); this "
                    "test's 24.11 run is the check")
    svc = name("seen")
    reserve_sbb(orchestrator, svc)
    create = sbatch("alice", "-J", "create", EXPORT, create_file(svc, sbb_line(svc)))
    try:
        wait_job(create, {"COMPLETED"})
        assert sm_state("alice", svc) == "staged-in"
        assert not [line for line in bbstat("bob") if svc in line]
    finally:
        orchestrator.delete(f"/ephemeralservice/release/{svc}")
        wait_status(orchestrator, svc, "STOPPED")


def test_the_plugins_token_releases_only_for_a_job_and_its_uid(kc_server):
    """``DELETE ephemeralservice/release`` with the burst-buffer role: without the job and
    its uid, 400 naming the parameter; with a uid that is not the service user's, refused;
    bob's reservation stays."""
    port, tokens, key, svc = kc_server
    bb = tokens.make(key, preferred_username="slurm-plugin", **roles("burst-buffer"))
    admin = tokens.make(key, preferred_username="ops", **roles("admin"))
    path = f"/v1.0.0/ephemeralservice/release/{svc}"
    before = request(port, "GET", f"/v1.0.0/ephemeralservice/status/{svc}", admin)[2]
    for query, field in (("", "job_id"), ("?job_id=7", "uid")):
        code, _, answer = request(port, "DELETE", path + query, bb)
        assert code == 400 and answer["field"] == field, (query, code, answer)
    code, _, answer = request(port, "DELETE", f"{path}?job_id=7&uid={uid_of('alice')}", bb)
    assert code == 403 and answer["field"] == "uid", answer
    assert "only its own user's services" in answer["message"], answer
    assert request(port, "GET", f"/v1.0.0/ephemeralservice/status/{svc}", admin)[2] == before
