"""Limits per user and per Slurm account (#19 item 4): Limit records in wfm.conf, a
default and overrides, Account records saying who is in which account; a reservation
over its user's or its account's limit waits without blocking others, or is refused."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wfm_orchestrator.config import Limit, describe, parse_config
from wfm_orchestrator.errors import ConfigError, NotFound, RequestFailed
from wfm_orchestrator.limits import Usage, bounds, demand
from wfm_orchestrator.model import parse_reserve
from wfm_orchestrator.resource_manager import ResourceManager, State
from wfm_orchestrator.store import Store

from ..conftest import ROOT, SMALL_CONF

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


def problems(lines):
    """The problems parse_config finds in SMALL_CONF (12 lines) followed by ``lines``."""
    text = SMALL_CONF.format(state_db="/var/lib/wfm/x.db", queue_policy="fifo") + lines + "\n"
    with pytest.raises(ConfigError) as e:
        parse_config(text, "wfm.conf")
    return e.value.problems


@pytest.mark.parametrize(("lines", "error"), [
    ("Limit=al/ice Cores=8", "expected default, a user name"),
    ("Limit=bob", "needs one of Cores="),
    ("Limit=bob Cores=many", "expected a whole number"),
    ("Limit=bob Nodes=3", "unknown key Nodes"),
    ("Limit=account:proj Cores=8",
     "Limit=account:proj: no Account=proj record says who its members are (add "
     "'Account=proj Users=<user>,...'"),
    ("Limit=account: Cores=4", "Limit=account: name '' is invalid"),
    ("Account=physics Users=alice\nAccount=chem Users=bob,alice",
     "user alice is in Account physics (line 13) and in Account chem: list each user under "
     "one account, its default Slurm account"),
    ("Account=physics", "Account physics needs Users=<user>,<user>,..."),
    ("Account=physics Users=", "Account physics needs Users="),
    ("Account=physics Users=alice,9lives", "user '9lives' is invalid: expected a POSIX user"),
    ("Account=physics Users=alice,bob,alice", "user alice listed twice"),
    ("Account=physics Users=alice\nAccount=physics Users=bob",
     "Account physics configured twice (first at line 13)"),
    ("Account=phy/sics Users=alice", "Account name 'phy/sics' is invalid"),
    ("Account=physics Users=alice Groups=x", "unknown key Groups in Account record"),
])
def test_bad_limit_and_account_records_are_refused_with_their_line(lines, error):
    [problem] = problems(lines)
    assert problem.line == 12 + lines.count("\n") + 1 and error in problem.message, problem


def test_an_invalid_account_record_does_not_blame_its_limit_too():
    """One mistake, one problem: the Limit of an Account record refused is not reported."""
    found = problems("Account=physics Users=9lives\nLimit=account:physics Cores=4")
    assert [p.line for p in found] == [13]


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


def test_a_start_sums_what_each_user_and_account_holds_as_one_add_at_a_time(make_config):
    """Usage.add_all (a start: counted per user and shape) and Usage.add (one at a time)
    give the same holdings, for several users, shapes and accounts."""
    config = make_config(ACCOUNTS)
    shapes = [("alice", 1, 4), ("alice", 2, 1), ("carol", 1, 4), ("bob", 3, 2),
              ("dave", 1, 1), ("alice", 1, 4)]
    requests = [parse_reserve(body(f"{user}_s_{i}", user=user, cores=cores, servers=servers),
                              config) for i, (user, servers, cores) in enumerate(shapes * 3)]
    at_once, one_by_one = Usage(config), Usage(config)
    at_once.add_all(requests)
    for req in requests:
        one_by_one.add(req)
    for user in ("alice", "bob", "carol", "dave", "erin"):
        assert at_once.held(user) == one_by_one.held(user)
    for account in ("physics", "chem", "none"):
        assert at_once.held_by_account(account) == one_by_one.held_by_account(account)
    # alice: 2 x (4 cores) + 2 servers x 1 core, 3 times over; 9 services
    assert at_once.held("alice")[0] == 3 * (4 + 2 + 4) and at_once.held("alice")[3] == 9
    assert at_once.held_by_account("physics")[0] == 3 * (4 + 2 + 4 + 4)


# --- per Slurm account ------------------------------------------------------------------

# alice and carol are in physics (12 cores together), bob in chem (no limit of its own);
# no record lists root or a user of another test.
ACCOUNTS = SMALL_CONF + """Account=physics Users=alice,carol
Account=chem Users=bob
Limit=account:physics Cores=12
"""


def write_conf(rm, old, new):
    with open(rm.config.path) as fh:
        text = fh.read()
    assert old in text
    with open(rm.config.path, "w") as fh:
        fh.write(text.replace(old, new))


def test_account_records_map_each_user_to_its_account_and_its_limit(make_config):
    config = make_config(ACCOUNTS)
    assert config.slurm_accounts["physics"].users == ("alice", "carol")
    assert config.account_limit_for("carol") == ("physics", Limit("account:physics", cores=12))
    assert config.account_limit_for("bob") == ("chem", None)  # an account without a Limit
    assert config.account_limit_for("dave") == ("", None)  # in no Account record
    assert config.limit_for("alice") is None  # the account's Limit is no user's
    summary = describe(config)  # check-config's
    assert "Slurm accounts (2):\n  physics: alice, carol\n  chem: bob\n" in summary
    assert "  account:physics: cores 12" in summary


def test_over_the_account_limit_waits_and_the_status_names_the_account(app_factory):
    """alice 8 + carol 4 hold physics's 12 cores: alice's next waits, and both the reserve
    answer and the status (through the API) name the account's limit and its record."""
    client, rm, _ = app_factory(text=ACCOUNTS)
    reserve(client, body("alice_s_1", cores=8))
    reserve(client, body("carol_s_1", user="carol", cores=4))
    answer = reserve(client, body("alice_s_2", cores=4))
    assert answer["status"] == "QUEUED"
    assert answer["message"].startswith("queued at position 1: waiting for account physics's")
    detail = status(client, "alice_s_2")["detail"]
    assert detail == (f"queued at position 1: waiting for account physics's limit: 12 cores "
                      f"held + 4 asked > 12 "
                      f"(Limit=account:physics in {rm.config.path})")
    rm.release("carol_s_1")[1].wait()  # a member's release makes room for the other's
    assert rm.get("alice_s_2").state.value == "FREE"


def test_a_reservation_waiting_for_its_account_blocks_no_other_account(app_factory):
    """fifo: physics's waiting reservation is first in the queue, yet bob's (chem) is placed
    at once; so is carol's (physics) while it fits the account, as Slurm starts other jobs
    while one waits for its association's limit."""
    client, rm, _ = app_factory(text=ACCOUNTS)
    reserve(client, body("alice_s_1", cores=8))
    reserve(client, body("carol_s_1", user="carol", cores=2))
    assert reserve(client, body("alice_s_2", cores=4))["status"] == "QUEUED"
    assert reserve(client, body("bob_s_1", user="bob", cores=8))["status"] == "FREE"
    assert reserve(client, body("carol_s_2", user="carol", cores=2))["status"] == "FREE"
    assert rm.get("alice_s_2").state.value == "QUEUED"


def test_a_user_in_no_account_has_only_the_user_limits(app_factory):
    client, _, _ = app_factory(text=ACCOUNTS.replace("Users=alice,carol", "Users=carol"))
    for i in range(2):
        assert reserve(client, body(f"alice_s_{i}", cores=8))["status"] == "FREE"


def test_refuse_policy_refuses_over_the_account_limit_and_records_nothing(app_factory):
    """500 naming the account's limit, its record and the setting; the refused reservation
    is not kept, and one that fits the account's room left is still placed."""
    client, rm, _ = app_factory(text=ACCOUNTS + "limit_policy = refuse\n")
    reserve(client, body("carol_s_1", user="carol", cores=8))
    r = reserve(client, body("alice_s_1", cores=8), status=500)
    assert r["description"] == (
        f"reservation 'alice_s_1' refused: account physics's limit: 8 cores held + 8 asked "
        f"> 12 (Limit=account:physics in {rm.config.path}) (limit_policy = refuse)")
    assert rm.get("alice_s_1") is None
    assert reserve(client, body("alice_s_2", cores=4))["status"] == "FREE"


def test_a_request_beyond_the_account_limit_alone_is_refused(app_factory):
    """Two 8-core servers can never fit physics's 12 cores: refused at once, even queued."""
    client, rm, _ = app_factory(text=ACCOUNTS)
    r = reserve(client, body("alice_s_1", cores=8, servers=2), status=500)
    assert r["description"] == (
        f"reservation 'alice_s_1' can never fit account physics's limit: it asks 16 cores, "
        f"the limit is 12 (Limit=account:physics in {rm.config.path})")


@pytest.mark.parametrize(("user_cores", "expected"), [
    (8, "alice's limit: 8 cores held + 4 asked > 8"),  # the user's limit is the tighter
    (16, "account physics's limit: 12 cores held + 4 asked > 12"),  # the account's is
])
def test_both_limits_apply_and_the_status_names_the_one_passed(app_factory, user_cores,
                                                                expected):
    client, rm, _ = app_factory(text=ACCOUNTS + f"Limit=default Cores={user_cores}\n")
    reserve(client, body("alice_s_1", cores=8))
    reserve(client, body("carol_s_1", user="carol", cores=4))
    assert reserve(client, body("alice_s_2", cores=4))["status"] == "QUEUED"
    assert expected in status(client, "alice_s_2")["detail"]


def test_a_reload_raising_the_account_limit_admits_what_waited(app_factory):
    client, rm, _ = app_factory(text=ACCOUNTS)
    reserve(client, body("alice_s_1", cores=8))
    reserve(client, body("carol_s_1", user="carol", cores=4))
    assert reserve(client, body("alice_s_2", cores=4))["status"] == "QUEUED"
    write_conf(rm, "Limit=account:physics Cores=12", "Limit=account:physics Cores=16")
    answer = client.simulate_post("/admin/reload").json
    assert "limit account:physics changed" in answer["changes"]
    assert rm.get("alice_s_2").state.value == "FREE"


def test_a_reload_moving_a_user_out_of_the_account_regroups_its_usage(app_factory):
    """carol moves to chem: her 4 cores leave physics's sum (alice's waiting one is
    admitted) and count in chem's, whose new limit then holds her next one; her release
    later is taken from chem, where it now counts."""
    client, rm, _ = app_factory(text=ACCOUNTS)
    reserve(client, body("alice_s_1", cores=8))
    reserve(client, body("carol_s_1", user="carol", cores=4))
    assert reserve(client, body("alice_s_2", cores=4))["status"] == "QUEUED"
    write_conf(rm, "Users=alice,carol\nAccount=chem Users=bob\n",
               "Users=alice\nAccount=chem Users=bob,carol\nLimit=account:chem Cores=6\n")
    answer = client.simulate_post("/admin/reload").json
    assert {"slurm account physics changed", "slurm account chem changed",
            "limit account:chem added"} <= set(answer["changes"])
    assert rm.get("alice_s_2").state.value == "FREE"
    assert reserve(client, body("carol_s_2", user="carol", cores=4))["status"] == "QUEUED"
    assert "account chem's limit: 4 cores held + 4 asked > 6" in \
        status(client, "carol_s_2")["detail"]
    rm.release("carol_s_1")[1].wait()
    assert rm.get("carol_s_2").state.value == "FREE"


def test_a_reload_removing_the_limit_says_why_the_rest_waits(app_factory):
    """A reservation left queued no longer names a limit the file does not hold."""
    client, rm, _ = app_factory(text=ACCOUNTS)
    reserve(client, body("alice_s_1", cores=8))
    reserve(client, body("carol_s_1", user="carol", cores=4))
    for i, cores in enumerate((8, 8, 4)):  # bob takes the 20 cores left
        assert reserve(client, body(f"bob_s_{i}", user="bob", cores=cores))["status"] == "FREE"
    assert reserve(client, body("alice_s_2", cores=4))["status"] == "QUEUED"
    assert "account physics's limit" in status(client, "alice_s_2")["detail"]
    write_conf(rm, "Limit=account:physics Cores=12\n", "")
    client.simulate_post("/admin/reload")
    assert rm.get("alice_s_2").state.value == "QUEUED"
    assert status(client, "alice_s_2")["detail"] == "queued at position 1: waiting for resources"


def test_account_usage_is_rebuilt_at_start(app_factory):
    client, _, store = app_factory(text=ACCOUNTS)
    reserve(client, body("carol_s_1", user="carol", cores=6, servers=2))
    store.close()
    client, _, _ = app_factory(text=ACCOUNTS)
    assert reserve(client, body("alice_s_1", cores=1))["status"] == "QUEUED"


# What `sacctmgr -nP show user format=defaultaccount,user` prints: root's association, an
# account whose name awk could take for a number, users in file order.
SACCTMGR = "physics|carol\nroot|root\nchem|bob\n0|zed\nphysics|alice\n\n"


def test_the_documented_one_liner_turns_sacctmgr_output_into_account_records(make_config):
    """docs/configuration.md's pipeline, run as written on sacctmgr's output: one record per
    account, every user under their default account, and wfm.conf accepts the records."""
    with open(os.path.join(ROOT, "docs", "configuration.md"), encoding="utf-8") as fh:
        doc = fh.read()
    [command] = re.findall(r"^\$ (sacctmgr -nP show user format=defaultaccount,user \| .*)$",
                           doc, re.M)
    pipeline = command.split(" | ", 1)[1]
    out = subprocess.run(["sh", "-c", pipeline], input=SACCTMGR, capture_output=True,
                         text=True, timeout=10, check=True).stdout
    assert out.splitlines() == ["Account=0 Users=zed", "Account=chem Users=bob",
                                "Account=physics Users=carol,alice", "Account=root Users=root"]
    config = make_config(SMALL_CONF + out)
    assert dict(config.account_of_user) == {"zed": "0", "bob": "chem", "carol": "physics",
                                            "alice": "physics", "root": "root"}


# --- the property: no sequence of reserves, releases and reloads passes a bound --------

PROPERTY_CONF = SMALL_CONF + """Limit=default Cores=10 Services=3
Limit=bob Cores=14
Account=physics Users=alice,carol
Limit=account:physics Cores=14 MemorySize=40GB
"""
# The reload moves carol to bob's account, which gets a limit of its own.
MOVED = PROPERTY_CONF.replace("Users=alice,carol", "Users=alice") + \
    "Account=chem Users=bob,carol\nLimit=account:chem Cores=16 Services=4\n"
USERS = ("alice", "bob", "carol")

property_ops = st.lists(st.one_of(
    st.tuples(st.just("reserve"), st.integers(0, 11), st.sampled_from(USERS),
              st.integers(1, 8), st.integers(1, 12), st.integers(1, 2)),
    st.tuples(st.just("release"), st.integers(0, 11), st.sampled_from(USERS)),
    st.tuples(st.just("reload"), st.sampled_from([PROPERTY_CONF, MOVED])),
), max_size=40)


def held_sums(rm):
    """(per user, per account) sums of what the held reservations hold, from the records."""
    users, accounts = {}, {}
    for rec in rm.live():
        if rec.state in (State.FREE, State.ALLOCATED):
            for table, key in ((users, rec.request.user),
                               (accounts, rm.config.account_of_user.get(rec.request.user))):
                if key is not None:
                    table[key] = [a + b for a, b in zip(table.get(key, (0, 0, 0, 0)),
                                                        demand(rec.request), strict=True)]
    return users, accounts


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=property_ops)
def test_usage_never_passes_a_bound_and_matches_the_records(tmp_path_factory, ops):
    """After any sequence: the bookkeeping equals the sums of the held reservations (also
    after a reload moved a user), and no user or account holds more than its Limit
    allows (a reload may leave an account over its new limit: not checked after one)."""
    path = tmp_path_factory.mktemp("limits") / "wfm.conf"
    text = PROPERTY_CONF.format(state_db=path.parent / "state.db", queue_policy="fifo")
    rm = ResourceManager(parse_config(text, str(path)), Store(str(path.parent / "state.db")))
    reloaded = False
    try:
        for op in ops:
            try:
                if op[0] == "reserve":
                    _, n, user, cores, gb, servers = op
                    rm.reserve(parse_reserve(
                        {"name": f"{user}_s_{n}", "user": user, "user_slurm_token": "t",
                         "type": "GBF", "servers": servers,
                         "attributes": {"cores": cores, "msize": gb * 1024, "gssize": 10,
                                        "mountpoint": "/m"}}, rm.config))[1].wait()
                elif op[0] == "release":
                    rm.release(f"{op[2]}_s_{op[1]}")[1].wait()
                else:
                    new = op[1].format(state_db=path.parent / "state.db", queue_policy="fifo")
                    rm.reload(parse_config(new, str(path)))[1].wait()
                    reloaded = True
            except (RequestFailed, NotFound):
                pass
            users, accounts = held_sums(rm)
            for user in USERS:
                assert rm._usage.held(user) == tuple(users.get(user, (0, 0, 0, 0))), op
            for account in ("physics", "chem"):
                assert rm._usage.held_by_account(account) == \
                    tuple(accounts.get(account, (0, 0, 0, 0))), op
            if reloaded:
                continue
            limits = [(rm.config.limit_for(user), used) for user, used in users.items()]
            limits += [(rm.config.limits.get(f"account:{account}"), used)
                       for account, used in accounts.items()]
            for limit, used in limits:
                assert limit is not None  # every user here has one, and physics has
                assert all(b is None or u <= b
                           for u, b in zip(used, bounds(limit), strict=True)), (limit, used)
    finally:
        rm.store.close()


def test_usage_summed_at_start_is_usage_added_one_by_one(make_config):
    """Usage.add_all (a start) holds for each user and account what add() of each would."""
    from wfm_orchestrator.limits import Usage

    config = make_config(LIMITS + "Account=physics Users=alice,carol\n")
    reqs = [parse_reserve(body(f"r{i}", user, cores=i % 3, servers=1 + i % 2), config)
            for i, user in enumerate(["alice", "bob", "carol", "alice", "bob"])]
    one, bulk = Usage(config), Usage(config)
    for req in reqs:
        one.add(req)
    bulk.add_all(reqs)
    for user in ("alice", "bob", "carol", "dave"):
        assert bulk.held(user) == one.held(user)
    assert bulk.held_by_account("physics") == one.held_by_account("physics") != (0, 0, 0, 0)
