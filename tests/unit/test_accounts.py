"""Accounts (issue #15 item 2): who a reservation or a step may run as, and when the
orchestrator may submit a user's job with the SlurmUser token (impersonate_users)."""

from __future__ import annotations

import logging
import pwd

import pytest
from falcon import testing

from wfm_orchestrator.accounts import Accounts, passwd_uid
from wfm_orchestrator.api import create_app
from wfm_orchestrator.errors import InvalidRequest
from wfm_orchestrator.model import parse_reserve
from wfm_orchestrator.resource_manager import ResourceManager
from wfm_orchestrator.services import ServiceManager
from wfm_orchestrator.steps import StepManager
from wfm_orchestrator.store import Store

from ..conftest import SBB, SERVICE_CONF, SMALL_CONF, STEP_BODY, STEP_CONF
from ..fake_slurm import FakeServices, FakeSlurm

# passwd_uid is imported above, before the autouse account_table fixture swaps the module's
# default: these tests read this machine's real account databases.


def refusal(accounts: Accounts, user: str) -> str:
    with pytest.raises(InvalidRequest) as e:
        accounts.check(user)
    assert e.value.field == "user"
    assert "give the name of an existing user account with a uid >=" in str(e.value)
    return str(e.value)


def system_account() -> pwd.struct_passwd:
    """An account of this machine with a uid from 1 to 999 (daemon on Debian)."""
    return next(p for p in pwd.getpwall() if 0 < p.pw_uid < 1000)


def test_real_lookup_refuses_root_unknown_system_and_nobody(make_config):
    accounts = Accounts(make_config(SMALL_CONF), passwd_uid)
    assert "is root (uid 0)" in refusal(accounts, "root")
    assert "no account named 'wfm_no_such_user'" in refusal(accounts, "wfm_no_such_user")
    system = system_account()
    assert f"system account (uid {system.pw_uid}, below min_user_uid)" in \
        refusal(accounts, system.pw_name)
    assert "is nobody (uid 65534" in refusal(accounts, pwd.getpwuid(65534).pw_name)


def test_real_lookup_accepts_an_account_at_min_user_uid(make_config):
    system = system_account()
    config = make_config(SMALL_CONF + f"min_user_uid = {system.pw_uid}\n")
    Accounts(config, passwd_uid).check(system.pw_name)  # no error
    assert passwd_uid(system.pw_name) == system.pw_uid


def test_slurm_user_is_refused_whatever_its_uid(make_config):
    accounts = Accounts(make_config(SMALL_CONF + "slurm_user = carol\n"),
                        {"carol": 5000, "slurm": 64030}.get)
    assert "'carol' is the SlurmUser (slurm_user)" in refusal(accounts, "carol")
    # With another SlurmUser, the name slurm is checked by its uid like any other.
    accounts.check("slurm")


def test_min_user_uid_is_a_setting(make_config):
    table = {"alice": 1001, "bob": 2001}.get
    accounts = Accounts(make_config(SMALL_CONF + "min_user_uid = 2000\n"), table)
    assert "system account (uid 1001, below min_user_uid)" in refusal(accounts, "alice")
    accounts.check("bob")
    assert make_config(SMALL_CONF).min_user_uid == 1000


@pytest.mark.parametrize("user", ["root", "slurm", "daemon", "nobody", "ghost"])
def test_reserve_refuses_the_user_with_400_naming_the_field(client, user):
    body = {**SBB, "user": user, "type": "GBF", "name": f"{user}_x",
            "attributes": {"cores": 1, "gssize": 0, "mountpoint": "/mnt/x"}}
    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=body)
    assert r.status_code == 400, r.text
    assert r.json["field"] == "user" and repr(user) in r.json["description"]
    # Nothing was reserved: no service of that name (nor of that user) is known.
    assert client.simulate_get(f"/v1.0.0/ephemeralservice/status/{user}_x").json == []
    assert client.simulate_get(f"/v1.0.0/ephemeralservice/status/{user}").json == []


def test_reserve_accepts_an_ordinary_account(client):
    body = {**SBB, "type": "GBF", "name": "bob_x", "user": "bob",
            "attributes": {"cores": 1, "gssize": 0, "mountpoint": "/mnt/x"}}
    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=body)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("user", ["root", "slurm", "daemon", "nobody", "ghost"])
def test_step_launch_refuses_the_user_with_400_naming_the_field(make_config, user, state_db):
    config = make_config(STEP_CONF)
    store = Store(config.state_db)
    try:
        rm = ResourceManager(config, store)
        slurm = FakeSlurm()
        steps = StepManager(config, store, FakeServices(), slurm, home=lambda u: "/home/" + u)
        client = testing.TestClient(create_app(config, rm, ServiceManager(config, rm, store,
                                                                          None), steps))
        body = {**STEP_BODY, "user": user, "name": f"{user}_s1_step_0", "services": []}
        r = client.simulate_post("/v1.0.0/step/launch", json=body)
        assert r.status_code == 400, r.text
        assert r.json["field"] == "user" and repr(user) in r.json["description"]
        assert steps.status(f"{user}_s1_step_0") is None
        steps.reconcile()
        assert slurm.submitted == []
    finally:
        store.close()


# --- impersonate_users ------------------------------------------------------------------

NO = "impersonate_users = no"


def service_world(make_config, impersonate: str):
    config = make_config(SERVICE_CONF.replace("impersonate_users = yes", impersonate))
    store = Store(config.state_db)
    rm = ResourceManager(config, store)
    slurm = FakeSlurm()
    return config, store, rm, ServiceManager(config, rm, store, slurm), slurm


@pytest.mark.parametrize("token,why", [
    ("alice-token", "Slurm refused alice's token (token refused)"),  # the SM's placeholder
    ("", "no Slurm token of alice was given"),
])
def test_without_impersonation_a_service_is_not_submitted_and_says_why(make_config, token, why,
                                                                      state_db):
    config, store, rm, sm, slurm = service_world(make_config, NO)
    try:
        slurm.refuse_user_tokens = True
        rm.reserve(parse_reserve({**SBB, "user_slurm_token": token}, config))[1].wait()
        sm.reconcile()
        assert slurm.submitted == []
        detail = sm.status(SBB["name"])["detail"]
        assert why in detail
        assert "impersonate_users = no" in detail and "impersonate_users = yes" in detail
    finally:
        store.close()


def test_without_impersonation_a_valid_user_token_still_submits(make_config, state_db):
    config, store, rm, sm, slurm = service_world(make_config, NO)
    try:
        rm.reserve(parse_reserve(SBB, config))[1].wait()
        sm.reconcile()
        assert [(u, t) for _, u, t in slurm.submitted] == [("alice", "alice-token")]
    finally:
        store.close()


def test_the_default_is_no_impersonation(make_config):
    config = make_config(SERVICE_CONF.replace("impersonate_users = yes\n", ""))
    assert config.impersonate_users is False
    assert make_config(SERVICE_CONF).impersonate_users is True


def test_each_impersonation_is_logged_with_the_user_and_the_job(make_config, caplog, state_db):
    config, store, rm, sm, slurm = service_world(make_config, "impersonate_users = yes")
    try:
        slurm.refuse_user_tokens = True
        rm.reserve(parse_reserve(SBB, config))[1].wait()
        with caplog.at_level(logging.INFO, logger="wfm_orchestrator.impersonation"):
            sm.reconcile()
        [(_, user, token)] = slurm.submitted
        assert (user, token) == ("alice", None)
        [job_id] = slurm.specs
        [message] = [r.getMessage() for r in caplog.records
                     if r.name == "wfm_orchestrator.impersonation"]
        assert f"service {SBB['name']}" in message and f"Slurm job {job_id} submitted for " \
            "alice with the SlurmUser token (impersonate_users = yes)" in message
    finally:
        store.close()


def test_without_impersonation_a_step_fails_naming_the_setting(make_config, state_db):
    config = make_config(STEP_CONF.replace("impersonate_users = yes", NO))
    store = Store(config.state_db)
    try:
        slurm, services = FakeSlurm(), FakeServices()
        services.usable()
        steps = StepManager(config, store, services, slurm, home=lambda u: "/home/" + u)
        steps.launch(dict(STEP_BODY))
        steps.reconcile()
        assert slurm.submitted == []
        st = steps.status(STEP_BODY["name"])
        assert st["status"] == "FAILED"
        assert "no Slurm token of alice was given" in st["detail"]
        assert "impersonate_users = no" in st["detail"]
    finally:
        store.close()


def test_a_step_job_with_impersonation_is_logged_with_the_user_and_the_job(env, caplog):
    config, make = env
    slurm, services = FakeSlurm(), FakeServices()
    services.usable()
    steps = make(slurm, services)
    steps.launch({**STEP_BODY, "services": []})
    with caplog.at_level(logging.INFO, logger="wfm_orchestrator.impersonation"):
        steps.reconcile()
    [job_id] = slurm.specs
    [message] = [r.getMessage() for r in caplog.records
                 if r.name == "wfm_orchestrator.impersonation"]
    assert message.startswith(f"step {STEP_BODY['name']} (main): ")
    assert f"Slurm job {job_id} submitted for alice with the SlurmUser token" in message
