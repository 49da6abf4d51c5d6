"""Limits per user (#19 item 4): Limit records in wfm.conf, a default and overrides; a
reservation over its user's limit waits without blocking others, or is refused."""

from __future__ import annotations

import pytest

from wfm_orchestrator.config import Limit, parse_config
from wfm_orchestrator.errors import ConfigError

from ..conftest import SMALL_CONF

LIMITS = SMALL_CONF + """Limit=default Cores=8 Services=3
Limit=bob Cores=16 MemorySize=20GB
"""


def body(name, user="alice", cores=4, servers=1):
    return {"name": name, "user": user, "user_slurm_token": "t", "type": "GBF",
            "servers": servers, "attributes": {"cores": cores, "gssize": 10,
                                               "mountpoint": "/m"}}


def reserve(client, b, status=200):
    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=b)
    assert r.status_code == status, r.text
    return r.json


def status(client, name):
    return client.simulate_get(f"/v1.0.0/ephemeralservice/status/{name}").json


def test_limit_records_merge_an_override_over_the_default(make_config):
    config = make_config(LIMITS)
    assert config.limit_for("alice") == Limit("default", cores=8, services=3)
    assert config.limit_for("bob") == Limit("bob", cores=16, msize=20480, services=3)
    assert config.limit_policy == "queue"


@pytest.mark.parametrize(("line", "error"), [
    ("Limit=account:proj Cores=8", "per Slurm account are not supported yet"),
    ("Limit=bob", "needs one of Cores="),
    ("Limit=bob Cores=many", "expected a whole number"),
    ("Limit=bob Nodes=3", "unknown key Nodes"),
])
def test_bad_limit_records_are_refused_with_their_line(line, error):
    text = SMALL_CONF.format(state_db="/var/lib/wfm/x.db", queue_policy="fifo") + line + "\n"
    with pytest.raises(ConfigError) as e:
        parse_config(text, "wfm.conf")
    [problem] = e.value.problems
    assert problem.line == text.count("\n") and error in problem.message


def test_over_the_limit_waits_without_blocking_other_users(app_factory, make_config):
    """alice's third 4-core reservation waits for her limit (8 cores); bob's goes on
    (fifo); her release admits it; the status names the limit."""
    client, rm, _ = app_factory(text=LIMITS)
    reserve(client, body("alice_s_1"))
    reserve(client, body("alice_s_2"))
    answer = reserve(client, body("alice_s_3"))
    assert answer["status"] == "QUEUED" and "alice's limit" in answer["message"]
    detail = status(client, "alice_s_3")["detail"]
    assert "alice's limit: 8 cores held + 4 asked > 8 (Limit=default in" in detail
    assert reserve(client, body("bob_s_1", user="bob"))["status"] == "FREE"
    rm.release("alice_s_1")[1].wait()
    assert rm.get("alice_s_3").state.value == "FREE"


def test_services_limit_counts_held_reservations(app_factory):
    client, rm, _ = app_factory(text=LIMITS)
    for i in range(3):
        reserve(client, body(f"alice_s_{i}", cores=1))
    assert reserve(client, body("alice_s_3", cores=1))["status"] == "QUEUED"
    assert "services held" in status(client, "alice_s_3")["detail"]


def test_an_override_raises_the_default_and_keeps_its_other_bounds(app_factory):
    """bob may hold 16 cores (his record) in at most 3 services (the default's)."""
    client, rm, _ = app_factory(text=LIMITS)
    for i in range(2):
        assert reserve(client, body(f"bob_s_{i}", user="bob", cores=8))["status"] == "FREE"
    assert reserve(client, body("bob_s_2", user="bob", cores=1))["status"] == "QUEUED"
    rm.release("bob_s_0")[1].wait()
    assert rm.get("bob_s_2").state.value == "FREE"
    assert reserve(client, body("bob_s_3", user="bob", cores=1))["status"] == "FREE"
    assert reserve(client, body("bob_s_4", user="bob", cores=1))["status"] == "QUEUED"
    assert "3 services held + 1 asked > 3" in status(client, "bob_s_4")["detail"]


def test_refuse_policy_refuses_naming_the_limit(app_factory):
    client, _, _ = app_factory(text=LIMITS + "limit_policy = refuse\n")
    reserve(client, body("alice_s_1", cores=8))
    r = reserve(client, body("alice_s_2", cores=1), status=500)
    assert "alice's limit: 8 cores held + 1 asked > 8" in r["description"]
    assert "limit_policy = refuse" in r["description"]


def test_a_request_beyond_the_limit_alone_is_refused(app_factory):
    """It could never be admitted: refused at once, whatever the policy."""
    client, _, _ = app_factory(text=LIMITS)
    r = reserve(client, body("alice_s_1", cores=3, servers=3), status=500)
    assert "can never fit alice's limit: it asks 9 cores, the limit is 8" in r["description"]


def test_usage_is_rebuilt_at_start_and_a_reload_changes_the_limits(app_factory):
    client, rm, store = app_factory(text=LIMITS)
    reserve(client, body("alice_s_1", cores=8))
    store.close()
    client, rm, _ = app_factory(text=LIMITS)
    assert reserve(client, body("alice_s_2", cores=1))["status"] == "QUEUED"
    with open(rm.config.path) as fh:
        text = fh.read()
    with open(rm.config.path, "w") as fh:
        fh.write(text.replace("Limit=default Cores=8", "Limit=default Cores=12"))
    answer = client.simulate_post("/admin/reload").json
    assert "limit default changed" in answer["changes"]
    assert rm.get("alice_s_2").state.value == "FREE"  # admitted under the new limit


def test_no_limit_records_no_limit(app_factory):
    client, rm, _ = app_factory()
    for i in range(4):
        assert reserve(client, body(f"alice_s_{i}", cores=8))["status"] == "FREE"
