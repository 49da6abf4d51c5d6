"""The Session Manager's own Slurm jobs, orchestrator side (#17): claims, unclaimed_timeout,
a destroy_persistent job's release, and bbstat's list for one uid.

The use cases on a real store with the fake Slurm (the ``world``), then the HTTP forms
through the resources themselves (api/service_status.py) on that world.
"""

import pytest

from tests.conftest import SBB
from wfm_orchestrator.binding import Binding, NotUsable

from .conftest import ACCOUNTS

NAME = SBB["name"]  # alice's
ALICE, BOB = ACCOUNTS["alice"], ACCOUNTS["bob"]
TIMEOUT = 3600.0  # the default unclaimed_timeout


def binding(world) -> Binding:
    return Binding(world.rm, world.sm, world.rm.accounts)


def rec(world, name=NAME):
    return world.rm.get(name)


# --- claims ---------------------------------------------------------------------------


def test_a_use_of_the_owners_job_claims_the_reservation_once(world):
    """usable() with a job id records the first claim, durably; later ones change nothing."""
    world.reserve()
    assert rec(world).claimed == ""
    binding(world).usable(NAME, ALICE, world.status(), job_id=42)
    binding(world).usable(NAME, ALICE, world.status(), job_id=43)
    world.store.flush()
    world.restart()
    assert rec(world).claimed == f"job 42 of uid {ALICE}"


def test_another_users_job_claims_nothing(world):
    """A refused use records no claim: bob cannot keep alice's reservation alive."""
    world.reserve()
    with pytest.raises(NotUsable):
        binding(world).usable(NAME, BOB, world.status(), job_id=42)
    assert rec(world).claimed == ""


def test_a_status_lookup_without_a_job_is_no_claim(world):
    """The plugin's wfm_use lookup of an older plugin (no job id) claims nothing."""
    world.reserve()
    binding(world).usable(NAME, ALICE, world.status())
    assert rec(world).claimed == ""


def test_the_orchestrators_own_service_job_binding_is_no_claim(world):
    """The service job the orchestrator submitted binds without claiming: that binding
    happens whether or not the user ever comes."""
    world.reserve()
    world.sm.reconcile()
    job_id = world.sm.job(NAME).job_id
    binding(world).bind(NAME, job_id, ALICE)[1].wait()
    assert rec(world).state.value == "ALLOCATED" and rec(world).claimed == ""


def test_an_administrators_binding_claims(world):
    """GET server/allocation without a job (the spec's form) is a claim."""
    world.reserve()
    binding(world).bind(NAME)[1].wait()
    assert rec(world).claimed.startswith("GET server/allocation")


# --- unclaimed_timeout ----------------------------------------------------------------


def test_an_unclaimed_reservation_is_released_after_the_timeout_and_says_why(world, caplog):
    """unclaimed_timeout after it took its resources, the service is released (its job
    cancelled first), logged, and its status names the setting."""
    world.reserve()
    world.sm.reconcile()  # its service job is submitted...
    job_id = world.sm.job(NAME).job_id
    world.slurm.put(job_id, NAME, "", "RUNNING")
    binding(world).bind(NAME, job_id, ALICE)[1].wait()  # ...and binds: no claim
    world.clock.now += TIMEOUT - 1
    assert world.sm.release_unclaimed() == []
    world.clock.now += 1
    with caplog.at_level("WARNING", logger="wfm_orchestrator.services"):
        assert world.sm.release_unclaimed() == [NAME]
    assert "unclaimed_timeout (3600 s)" in caplog.text and NAME in caplog.text
    st = world.status()
    assert st["status"] == "STAGINGOUT" and "unclaimed_timeout (3600 s)" in st["detail"]
    world.sm.reconcile()
    assert world.slurm.cancelled == [(job_id, "SIGKILL")]
    world.slurm.put(job_id, NAME, "", "CANCELLED")
    world.sm.reconcile()
    binding(world).unbind(NAME, job_id).wait()  # the plugin's teardown
    st = world.status()
    assert st["status"] == "STOPPED"
    assert st["detail"].startswith("released by the orchestrator: unclaimed_timeout (3600 s)")
    assert world.sm.release_unclaimed() == []  # once


def test_a_claimed_reservation_is_never_released_for_it(world):
    world.reserve()
    binding(world).usable(NAME, ALICE, world.status(), job_id=7)
    world.clock.now += 10 * TIMEOUT
    assert world.sm.release_unclaimed() == []
    assert rec(world).state.value == "FREE"


def test_the_clock_starts_when_a_queued_reservation_takes_its_resources(world):
    """A queued reservation holds nothing: its unclaimed_timeout counts from admission."""
    big = {**SBB, "name": "alice_s_big", "attributes": {"flavor": "large", "targets": ["/x"]}}
    fills = [{**big, "name": f"alice_s_fill{i}"} for i in range(4)]
    for body in fills:
        world.reserve(body)
    for body in fills:  # claimed: they stay
        binding(world).usable(body["name"], ALICE, world.status(body["name"]), job_id=1)
    assert world.reserve(big).state.value == "QUEUED"
    world.clock.now += 2 * TIMEOUT
    assert world.sm.release_unclaimed() == []  # still queued: nothing held
    world.release(fills[0]["name"])  # no job yet: freed now; the big one is admitted
    assert rec(world, "alice_s_big").state.value == "FREE"
    world.clock.now += TIMEOUT - 1
    assert world.sm.release_unclaimed() == []
    world.clock.now += 1
    assert world.sm.release_unclaimed() == ["alice_s_big"]


def test_zero_means_never(make_config):
    from tests.conftest import SERVICE_CONF

    config = make_config(SERVICE_CONF + "unclaimed_timeout = 0\n")
    assert config.unclaimed_timeout == 0


@pytest.mark.parametrize("value", ["5", "-1", "2592001", "soon"])
def test_a_bad_unclaimed_timeout_is_refused(make_config, value):
    from tests.conftest import SERVICE_CONF
    from wfm_orchestrator.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        make_config(SERVICE_CONF + f"unclaimed_timeout = {value}\n")
    assert "unclaimed_timeout" in str(e.value)


def test_a_step_naming_the_service_claims_it(env):
    """step/launch naming a service claims it once the step checks it (its user's)."""
    from tests.conftest import STEP_BODY
    from tests.fake_slurm import FakeServices

    config, make = env
    services = FakeServices()
    services.usable()
    steps = make(services=services)
    steps.launch(STEP_BODY)[1].wait()
    steps.reconcile()
    assert ("alice_s1_sbb", "step alice_s1_step_0") in services.claims


# --- HTTP: the plugin's calls for the SM's jobs (the ``http`` fixture) -------------------


def test_http_destroy_of_another_users_service_is_refused_and_nothing_changes(world, http):
    """DELETE release?job_id&uid of bob's job on alice's service: 403 naming uid and the
    rule."""
    world.reserve()
    before = world.status()
    r = http.simulate_delete(f"/release/{NAME}", params={"job_id": "9", "uid": str(BOB)})
    assert r.status_code == 403 and r.json["field"] == "uid"
    assert "a job may stop only its own user's services" in r.json["message"]
    assert world.status() == before and rec(world).state.value == "FREE"


def test_http_destroy_by_the_owners_job_releases_and_says_which_job(world, http):
    world.reserve()
    r = http.simulate_delete(f"/release/{NAME}", params={"job_id": "9", "uid": str(ALICE)})
    assert r.status_code == 200, r.text
    st = world.status()
    assert st["status"] == "STOPPED"
    assert st["detail"].startswith(f"stopped by job 9 of uid {ALICE} (destroy_persistent)")


def test_http_status_with_job_id_claims(world, http):
    world.reserve()
    r = http.simulate_get(f"/status/{NAME}", params={"uid": str(ALICE), "job_id": "5"})
    assert r.status_code == 200 and r.json["type"] == "SBB" and r.json["id"] == 1
    assert rec(world).claimed == f"job 5 of uid {ALICE}"


def test_http_list_with_uid_shows_only_that_users_services(world, http):
    """bbstat under 24.11 (uid given): only the asker's services; 22.05 (none): all."""
    world.reserve()
    world.reserve({**SBB, "name": "bob_s_sbb", "user": "bob"})
    names = {s["name"] for s in http.simulate_get("/status", params={"uid": str(BOB)}).json}
    assert names == {"bob_s_sbb"}
    assert {s["name"] for s in http.simulate_get("/status").json} == {NAME, "bob_s_sbb"}



def test_the_plugins_role_releases_only_for_a_job_and_its_uid(secured):
    """DELETE ephemeralservice/release with the burst-buffer role: 400 naming job_id, then
    uid, when missing; its status list needs no uid (22.05 does not say who asks)."""
    client, tokens = secured
    bb = {"Authorization": f"Bearer {tokens['bb']}"}
    path = "/v1.0.0/ephemeralservice/release/alice_s_x"
    r = client.simulate_delete(path, headers=bb)
    assert r.status_code == 400 and r.json["field"] == "job_id", r.text
    r = client.simulate_delete(path, params={"job_id": "5"}, headers=bb)
    assert r.status_code == 400 and r.json["field"] == "uid", r.text
    r = client.simulate_delete(path, params={"job_id": "5", "uid": str(ALICE)}, headers=bb)
    assert r.status_code == 403 and "a job may stop only its own user's services" \
        in r.json["message"]  # no such service of alice: the same words
    assert client.simulate_get("/v1.0.0/ephemeralservice/status", headers=bb).status_code == 200


def test_reservations_held_before_the_upgrade_count_as_claimed(tmp_path):
    """Schema migration 7: rows holding resources before it are claimed (an upgrade releases
    nothing); queued and released ones are not, and held_since is empty."""
    import sqlite3

    from wfm_orchestrator.store import APPLICATION_ID, MIGRATIONS, Store

    path = str(tmp_path / "old.db")
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    for migration in MIGRATIONS[:6]:
        for stmt in migration.split(";"):
            if stmt.strip():
                conn.execute(stmt)
    conn.execute("PRAGMA user_version = 6")
    for name, state in (("a", "FREE"), ("b", "ALLOCATED"), ("c", "QUEUED"), ("d", "RELEASED")):
        conn.execute("INSERT INTO reservation (name, user, type, request, state, seq, created,"
                     " updated) VALUES (?, 'alice', 'SBB', '{}', ?, 1, 0, 0)", (name, state))
    conn.commit()
    conn.close()
    Store(path).close()
    rows = dict(sqlite3.connect(path).execute("SELECT name, claimed FROM reservation"))
    assert rows == {"a": "held before unclaimed_timeout existed",
                    "b": "held before unclaimed_timeout existed", "c": "", "d": ""}
