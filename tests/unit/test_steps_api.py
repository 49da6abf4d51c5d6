"""The step endpoints in-process: codes, lookup order, error bodies naming the field."""

from __future__ import annotations

from falcon import testing

from wfm_orchestrator.api import create_app
from wfm_orchestrator.resource_manager import ResourceManager
from wfm_orchestrator.services import ServiceManager
from wfm_orchestrator.steps import StepManager
from wfm_orchestrator.store import Store

from ..conftest import STEP_BODY as BODY
from ..conftest import STEP_CONF as CONF
from ..fake_slurm import FakeServices, FakeSlurm


def make_client(make_config):
    config = make_config(CONF)
    store = Store(config.state_db)
    rm = ResourceManager(config, store)
    services = ServiceManager(config, rm, store, None)
    steps = StepManager(config, store, FakeServices(), FakeSlurm(), home=lambda u: "/home/" + u)
    return testing.TestClient(create_app(config, rm, services, steps)), steps, store


def launch_for_two_users(client, count: int = 5) -> None:
    """``count`` steps each for alice and bob, launched in turn through the API."""
    for i in range(count):
        for user in ("alice", "bob"):
            body = {**BODY, "name": f"{user}_s1_step_{i}", "user": user, "services": []}
            assert client.simulate_post("/v1.0.0/step/launch", json=body).status_code == 200


def test_launch_status_progress_abort(make_config, state_db):
    client, steps, store = make_client(make_config)
    try:
        r = client.simulate_post("/v1.0.0/step/launch", json=BODY)
        assert r.status_code == 200 and r.json["status"] == "PENDING"
        st = client.simulate_get(f"/v1.0.0/step/status/{BODY['name']}").json
        assert st["name"] == BODY["name"] and st["user"] == "alice" and st["status"] == "PENDING"
        assert st["time"].endswith("Z")
        # A name is looked up first, then a user id.
        assert [s["name"] for s in client.simulate_get("/v1.0.0/step/status/alice").json] == [
            BODY["name"]]
        assert client.simulate_get("/v1.0.0/step/status/nobody").json == []
        assert len(client.simulate_get("/v2.0.0/step/status").json) == 1
        secret = steps.step(BODY["name"]).mover_secret
        r = client.simulate_post("/v1.0.0/step/progress", json={
            "step_name": BODY["name"], "datamover_name": "in1", "progress": "10%",
            "step_secret": secret})
        assert r.status_code == 200
        # Without the step's own secret: 403 naming the field and the rule, not 500.
        r = client.simulate_post("/v1.0.0/step/progress", json={
            "step_name": BODY["name"], "datamover_name": "in1", "progress": "10%"})
        assert r.status_code == 403 and r.json["field"] == "step_secret", r.text
        assert "only the step's own data movers" not in r.json["message"]
        assert "must carry the step's secret" in r.json["message"]
        r = client.simulate_post("/v1.0.0/step/progress", json={
            "step_name": BODY["name"], "datamover_name": "in1", "progress": "10%",
            "step_secret": secret[::-1]})
        assert r.status_code == 403 and "only the step's own data movers" in r.json["message"]
        r = client.simulate_post("/v1.0.0/step/progress", json={
            "step_name": "nope", "datamover_name": "in1", "progress": "10%"})
        assert r.status_code == 500 and "not found" in r.json["message"]
        for _ in range(2):
            r = client.simulate_delete(f"/v1.0.0/step/abort/{BODY['name']}")
            assert r.status_code == 200
        assert client.simulate_delete("/v1.0.0/step/abort/nope").status_code == 500
    finally:
        store.close()


def test_bad_launch_is_400_naming_the_field(make_config, state_db):
    client, steps, store = make_client(make_config)
    try:
        r = client.simulate_post("/v1.0.0/step/launch", json={**BODY, "command": "-x 1 a.sh"})
        assert r.status_code == 400 and r.json["field"] == "command"
        assert "'-x'" in r.json["message"]
        r = client.simulate_post("/v1.0.0/step/launch",
                                 json={**BODY, "command_env": "BASH_ENV=/tmp/x"})
        assert r.status_code == 400 and r.json["field"] == "command_env"
        r = client.simulate_get("/v1.0.0/step/status/-bad")
        assert r.status_code == 400
    finally:
        store.close()


def test_without_slurm_launch_is_500_and_status_empty(app_factory):
    client, _, _ = app_factory()
    r = client.simulate_post("/v1.0.0/step/launch", json={**BODY, "location": [],
                                                          "services": []})
    assert r.status_code == 500 and "no Slurm" in r.json["message"]
    assert client.simulate_get("/v1.0.0/step/status").json == []


def test_a_users_list_is_read_by_the_user_index(make_config, monkeypatch, state_db):
    """step/status/{user_id} asks the step manager for the user's steps by ``user=`` (the
    database's index), not by a filter reading every step."""
    client, steps, store = make_client(make_config)
    calls = []
    page = steps.page

    def spy(after, limit, keep=None, user=None):
        calls.append((keep, user))
        return page(after, limit, keep, user=user)

    try:
        client.simulate_post("/v1.0.0/step/launch", json=BODY)
        client.simulate_post("/v1.0.0/step/launch", json={**BODY, "name": "bob_s1_step",
                                                          "user": "bob"})
        monkeypatch.setattr(steps, "page", spy)
        assert [s["name"] for s in client.simulate_get("/v1.0.0/step/status/alice").json] \
            == [BODY["name"]]
        assert calls == [(None, "alice")]
    finally:
        store.close()


def test_metrics_and_dashboard_count_the_lists_statuses(make_config, state_db):
    """The wfm_steps gauge and the dashboard's steps (from counts() and newest(), not every
    status) agree with the step list."""
    from prometheus_client.parser import text_string_to_metric_families

    client, steps, store = make_client(make_config)
    try:
        for i in range(3):
            client.simulate_post("/v1.0.0/step/launch", json={**BODY, "name": f"s_{i}"})
        client.simulate_delete("/v1.0.0/step/abort/s_1")
        statuses = steps.statuses()
        counted: dict[str, float] = {}
        for st in statuses:
            counted[st["status"]] = counted.get(st["status"], 0) + 1
        assert len(counted) == 2  # PENDING and the aborted one's
        text = client.simulate_get("/metrics").text
        [family] = [f for f in text_string_to_metric_families(text) if f.name == "wfm_steps"]
        assert {s.labels["status"]: s.value for s in family.samples} == counted
        shown = client.simulate_get("/ui/overview").json["steps"]
        assert shown == {"count": 3, "items": statuses}
    finally:
        store.close()
