"""The authorization matrix: every endpoint x every kind of caller, with real JWTs.

A stand-in Keycloak (tests/jwks_fixture.py) publishes the realm's keys over
real HTTP; the application verifies each token against them.
"""

import pytest

from .conftest import CALLERS, caller_tokens, keycloak_conf

RESERVE = {"name": "alice_s_x", "user": "alice", "user_slurm_token": "secret-slurm-token",
           "type": "GBF", "attributes": {"gssize": 10, "mountpoint": "/m"}}

# (method, path, body) -> the callers that may; every other caller gets 403.
# "read" entries are open to every authenticated caller (lists filtered).
MATRIX = [
    ("POST", "/v1.0.0/ephemeralservice/reserve", RESERVE, {"sm", "admin"}),
    ("GET", "/v2.0.0/server/allocation/alice_s_x", None, {"bb", "admin"}),
    ("DELETE", "/v2.0.0/server/allocation/alice_s_x", None, {"bb", "admin"}),
    ("POST", "/v2.0.0/server/jobservice?job_id=7&uid=1001", {"type": "GBF"}, {"bb", "admin"}),
    ("DELETE", "/v2.0.0/server/jobservice?job_id=7", None, {"bb", "admin"}),
    ("GET", "/v1.0.0/server/resources/all", None, {"admin"}),
    ("GET", "/v1.0.0/server/resources/dn1", None, {"admin"}),
    ("GET", "/v1.0.0/location/list", None, set(CALLERS)),
    ("GET", "/v1.0.0/ephemeralservice/flavors", None, set(CALLERS)),
    ("GET", "/v1.0.0/ephemeralservice/status", None, set(CALLERS)),
    ("GET", "/v1.0.0/ephemeralservice/status/alice_s_x", None, set(CALLERS)),
    ("DELETE", "/v1.0.0/ephemeralservice/release/alice_s_x", None, {"sm", "bb", "admin"}),
    ("POST", "/v1.0.0/step/launch", {"name": "alice_s_st_1", "user": "alice",
                                     "command": "sbatch --wrap true"}, {"sm", "admin"}),
    ("POST", "/v1.0.0/step/progress", {"step_name": "alice_s_st_1", "datamover_name": "d",
                                       "progress": "5%"}, {"dm", "admin"}),
    ("GET", "/v1.0.0/step/status", None, set(CALLERS)),
    ("GET", "/v1.0.0/step/status/alice_s_st_1", None, set(CALLERS)),
    ("DELETE", "/v1.0.0/step/abort/alice_s_st_1", None, {"sm", "admin"}),
    ("GET", "/metrics", None, {"mx", "admin"}),
    ("GET", "/ui/overview", None, {"admin"}),
    ("GET", "/admin/datanodes", None, {"admin"}),
    ("POST", "/admin/datanodes/dn1/drain", {"reason": "disk"}, {"admin"}),
    ("POST", "/admin/datanodes/dn1/resume", None, {"admin"}),
    ("GET", "/admin/reservations", None, {"admin"}),
    ("GET", "/admin/reservations/alice_s_x", None, {"admin"}),
    ("POST", "/admin/reload", None, {"admin"}),
]


def call(client, method, path, body, token):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.simulate_request(method, path, json=body, headers=headers)


def seed(client, tokens):
    r = call(client, "POST", "/v1.0.0/ephemeralservice/reserve", RESERVE, tokens["sm"])
    assert r.status_code == 200, r.text
    bob = dict(RESERVE, name="bob_s_y", user="bob")
    assert call(client, "POST", "/v1.0.0/ephemeralservice/reserve", bob,
                tokens["sm"]).status_code == 200


@pytest.mark.parametrize(("method", "path", "body", "allowed"), MATRIX,
                         ids=[f"{m} {p}" for m, p, _, _ in MATRIX])
@pytest.mark.parametrize("caller", list(CALLERS))
def test_authorization_matrix(secured, method, path, body, allowed, caller):
    """Each caller gets through exactly where the matrix says, else 403 (never 401)."""
    client, tokens = secured
    seed(client, tokens)
    r = call(client, method, path, body, tokens[caller])
    if caller in allowed:
        assert r.status_code not in (401, 403), (caller, r.status_code, r.text)
    else:
        assert r.status_code == 403, (caller, r.status_code, r.text)
        assert "role" in r.json["message"]


@pytest.mark.parametrize(("method", "path", "body", "allowed"), MATRIX,
                         ids=[f"{m} {p}" for m, p, _, _ in MATRIX])
def test_auth_none_lets_every_endpoint_through_without_a_token(client, method, path, body,
                                                               allowed):
    """auth = none (loopback only): the anonymous admin, no authorization middleware."""
    client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=RESERVE)
    r = call(client, method, path, body, None)
    assert r.status_code not in (401, 403), r.text


@pytest.mark.parametrize(("method", "path", "body", "allowed"), MATRIX,
                         ids=[f"{m} {p}" for m, p, _, _ in MATRIX])
def test_every_endpoint_refuses_a_missing_or_bad_token_with_401(secured, method, path, body,
                                                                allowed):
    """No token, or a broken one: 401 with WWW-Authenticate, nothing changed."""
    client, tokens = secured
    for token in (None, tokens["admin"][:-4] + "AAAA", "not-a-jwt"):
        r = call(client, method, path, body, token)
        assert r.status_code == 401, (token, r.text)
        assert r.headers.get("www-authenticate", "").startswith("Bearer")
    r = call(client, "GET", "/v1.0.0/ephemeralservice/status", None, tokens["admin"])
    assert r.json == []


def test_lists_never_show_another_users_items(secured):
    """Ordinary users see only their own services; privileged roles see all."""
    client, tokens = secured
    seed(client, tokens)

    def names(caller, path="/v1.0.0/ephemeralservice/status"):
        r = call(client, "GET", path, None, tokens[caller])
        assert r.status_code == 200
        body = r.json
        return sorted(s["name"] for s in (body if isinstance(body, list) else [body]))

    assert names("owner") == ["alice_s_x"]
    assert names("other") == ["bob_s_y"]
    assert names("norole") == [] and names("dm") == []
    assert names("sm") == names("admin") == names("bb") == ["alice_s_x", "bob_s_y"]
    # by name: another user's service is not revealed (answered as an unknown user id)
    assert names("other", "/v1.0.0/ephemeralservice/status/alice_s_x") == []
    assert names("owner", "/v1.0.0/ephemeralservice/status/alice_s_x") == ["alice_s_x"]
    # by user id: only one's own
    assert names("other", "/v1.0.0/ephemeralservice/status/alice") == []
    assert names("owner", "/v1.0.0/ephemeralservice/status/alice") == ["alice_s_x"]


def test_pages_never_show_another_users_items(secured):
    """Paged lists are filtered before their limit, like whole ones: an ordinary user's pages
    and next cursors come from his own items only, whatever cursor he sends (one made up,
    one of a list he may not read whole)."""
    client, tokens = secured
    for i in range(3):
        for user in ("alice", "bob"):
            body = dict(RESERVE, name=f"{user}_s_{i}", user=user)
            r = call(client, "POST", "/v1.0.0/ephemeralservice/reserve", body, tokens["sm"])
            assert r.status_code == 200, r.text

    def page(caller, query, path="/v1.0.0/ephemeralservice/status"):
        r = client.simulate_get(path, query_string=query,
                                headers={"Authorization": f"Bearer {tokens[caller]}"})
        assert r.status_code == 200, r.text
        return [s["name"] for s in r.json], r.headers.get("x-next-cursor")

    seen, after = [], None
    while True:
        names, after = page("owner", "limit=1" + (f"&after={after}" if after else ""))
        seen += names
        if after is None:
            break
    assert seen == ["alice_s_0", "alice_s_1", "alice_s_2"]
    _, admins = page("admin", "limit=1")  # the cursor after alice_s_0, taken by the admin
    assert page("owner", f"limit=5&after={admins}")[0] == ["alice_s_1", "alice_s_2"]
    assert page("other", "limit=5&after=r~0")[0] == ["bob_s_0", "bob_s_1", "bob_s_2"]
    assert page("other", "limit=2") == (["bob_s_0", "bob_s_1"], page("admin", "limit=4")[1])
    assert page("other", "limit=5", "/v1.0.0/ephemeralservice/status/alice") == ([], None)


def test_openapi_document_is_public(secured):
    """/openapi.json needs no token."""
    client, _ = secured
    assert client.simulate_get("/openapi.json").status_code == 200


def test_the_dashboards_page_is_public_and_its_data_is_not(secured):
    """/ui and its assets hold no data: public. /ui/overview: 401 without a token."""
    client, tokens = secured
    for path in ("/ui", "/ui/dashboard.js", "/ui/dashboard.css"):
        r = client.simulate_get(path)
        assert r.status_code == 200, path
        assert "default-src 'none'" in r.headers["content-security-policy"]
    assert client.simulate_get("/ui/overview").status_code == 401
    doc = client.simulate_get("/openapi.json").json
    assert doc["paths"]["/ui"]["get"]["security"] == []
    assert "security" not in doc["paths"]["/ui/overview"]["get"]


def test_openapi_document_declares_the_bearer_token_and_its_errors(secured):
    """With auth = keycloak: the bearer scheme, required everywhere, and 401/403/503 documented."""
    secured_client, _ = secured
    doc = secured_client.simulate_get("/openapi.json").json
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": doc["components"]["securitySchemes"]["bearerAuth"]["description"]}
    assert doc["security"] == [{"bearerAuth": []}]
    operations = [op for ops in doc["paths"].values()
                  for method, op in ops.items() if method != "parameters"
                  and op.get("security") != []]  # the dashboard's page and assets: public
    assert len(operations) == len(MATRIX)
    for op in operations:
        assert {"401", "403", "503"} <= set(op["responses"]), op["summary"]


def test_user_slurm_token_never_appears_in_answers_or_logs(secured, caplog):
    """The user's Slurm token is in no status, error or log line."""
    client, tokens = secured
    seed(client, tokens)
    bodies = [call(client, "GET", "/v1.0.0/ephemeralservice/status", None, tokens["admin"]).text,
              call(client, "POST", "/v1.0.0/ephemeralservice/reserve",
                   dict(RESERVE, servers=2), tokens["sm"]).text,
              call(client, "GET", "/v2.0.0/server/allocation/alice_s_x", None,
                   tokens["bb"]).text]
    assert all("secret-slurm-token" not in b for b in bodies)
    assert "secret-slurm-token" not in caplog.text


def test_step_lists_never_show_another_users_steps(make_config, jwks_server, state_db):
    """Step status lists and lookups are filtered per owner like services."""
    from falcon import testing

    from wfm_orchestrator.api import create_app
    from wfm_orchestrator.resource_manager import ResourceManager
    from wfm_orchestrator.services import ServiceManager
    from wfm_orchestrator.steps import StepManager
    from wfm_orchestrator.store import Store

    from ..conftest import STEP_BODY as BODY
    from ..conftest import STEP_CONF as CONF
    from ..fake_slurm import FakeServices, FakeSlurm

    config = make_config(keycloak_conf(CONF, jwks_server))
    store = Store(config.state_db)
    try:
        rm = ResourceManager(config, store)
        steps = StepManager(config, store, FakeServices(), FakeSlurm(),
                            home=lambda u: "/home/" + u)
        client = testing.TestClient(create_app(config, rm, ServiceManager(config, rm, store,
                                                                          None), steps))
        tokens = caller_tokens(jwks_server)
        for user in ("alice", "bob"):
            body = {**BODY, "name": f"{user}_s1_step_0", "user": user, "services": []}
            r = call(client, "POST", "/v1.0.0/step/launch", body, tokens["sm"])
            assert r.status_code == 200, r.text

        def names(caller, path="/v1.0.0/step/status"):
            r = call(client, "GET", path, None, tokens[caller])
            assert r.status_code == 200
            body = r.json
            return sorted(s["name"] for s in (body if isinstance(body, list) else [body]))

        assert names("owner") == ["alice_s1_step_0"]
        assert names("other") == ["bob_s1_step_0"]
        assert names("norole") == names("dm") == names("bb") == []
        assert names("sm") == names("admin") == ["alice_s1_step_0", "bob_s1_step_0"]
        assert names("other", "/v1.0.0/step/status/alice_s1_step_0") == []
        assert names("other", "/v1.0.0/step/status/alice") == []
        assert names("owner", "/v1.0.0/step/status/alice_s1_step_0") == ["alice_s1_step_0"]
    finally:
        store.close()


def test_on_the_event_loop_a_key_fetch_is_handed_to_a_worker(secured, jwks_server):
    """api/auth.py: on the loop a fetch would block: HandToWorker, before any fetch."""
    from wfm_orchestrator.api.serving import LOOP, HandToWorker
    from wfm_orchestrator.http.channel import LoopRequest

    client, tokens = secured
    on_loop = {LOOP: LoopRequest(lambda callback: None)}
    fetches = jwks_server.fetches
    with pytest.raises(HandToWorker):
        client.simulate_get("/v1.0.0/location/list", extras=on_loop,
                            headers={"Authorization": f"Bearer {tokens['sm']}"})
    assert jwks_server.fetches == fetches
    assert call(client, "GET", "/v1.0.0/location/list", None, tokens["sm"]).status_code == 200
    result = client.simulate_get("/v1.0.0/location/list", extras=on_loop,
                                 headers={"Authorization": f"Bearer {tokens['sm']}"})
    assert result.status_code == 200  # cached now: served on the loop
