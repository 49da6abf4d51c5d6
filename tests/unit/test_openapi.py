"""The OpenAPI document tells the truth: it matches the routes, and Schemathesis agrees."""

import pytest
import schemathesis
import schemathesis.specs.openapi.checks as oac
from hypothesis import HealthCheck, settings

from wfm_orchestrator.api.app import VERSIONS, operator_routes, routes
from wfm_orchestrator.api.metrics import Metrics
from wfm_orchestrator.api.openapi import CANONICAL_VERSION, DEFAULT_VERSION


def operator_table(rm, services):
    return dict(operator_routes(rm.config, rm, services, None, Metrics()))


def test_document_lists_exactly_the_routes(app_factory):
    """Every route is documented under its canonical version (the operators' paths,
    /metrics and /ui, without one), and nothing else."""
    client, rm, _ = app_factory()
    doc = client.simulate_get("/openapi.json").json
    expected = {f"/{CANONICAL_VERSION.get(p, DEFAULT_VERSION)}{p}"
                for p, _ in routes(rm.config, rm, client.services)}
    assert set(doc["paths"]) == expected | set(operator_table(rm, client.services))
    assert "aliases" in doc["info"]["description"]


def test_document_methods_match_the_resources(app_factory):
    """Each documented method exists on its resource, and each responder is documented."""
    client, rm, _ = app_factory()
    doc = client.simulate_get("/openapi.json").json
    table = {f"/{CANONICAL_VERSION.get(path, DEFAULT_VERSION)}{path}": resource
             for path, resource in routes(rm.config, rm, client.services)}
    table.update(operator_table(rm, client.services))
    for path, resource in table.items():
        ops = doc["paths"][path]
        methods = {m for m in ("get", "post", "delete", "put", "patch") if m in ops}
        responders = {m for m in ("get", "post", "delete", "put", "patch")
                      if hasattr(resource, f"on_{m}")}
        assert methods == responders, path


def test_auth_none_document_asks_for_no_token(client):
    """auth = none: no security scheme and no 401/403 (test_authorization has keycloak's)."""
    doc = client.simulate_get("/openapi.json").json
    assert "security" not in doc and "securitySchemes" not in doc["components"]
    assert all("401" not in op["responses"] for ops in doc["paths"].values()
               for method, op in ops.items() if method != "parameters")


def test_step_progress_documents_the_step_secret_and_its_403():
    """step_secret is in the request schema; its 403 stays named beside the token's one."""
    from wfm_orchestrator.api.openapi import document

    for bearer in (False, True):
        doc = document(["/step/progress"], bearer=bearer)
        schema = doc["components"]["schemas"]["StepProgressRequest"]
        assert "step_secret" in schema["properties"]
        assert "step_secret" not in schema["required"]  # additive: older clients parse
        why = doc["paths"]["/v1.0.0/step/progress"]["post"]["responses"]["403"]["description"]
        assert "step_secret" in why
        assert ("roles" in why) == bearer


@pytest.mark.parametrize("version", VERSIONS)
def test_every_path_is_served_under_every_version(client, version):
    """/v1.0.0, /v2.0.0 and /v2.1.0 serve the same resources (no redirects)."""
    assert client.simulate_get(f"/{version}/location/list").status_code == 200
    assert client.simulate_get(f"/{version}/ephemeralservice/flavors").status_code == 200
    assert client.simulate_get(f"/{version}/server/resources/all").status_code == 200
    assert client.simulate_get(f"/{version}/server/allocation/none_x").status_code == 500


# web_schema: the served document over the in-process application (tests/unit/conftest.py).
schema = schemathesis.pytest.from_fixture("web_schema")


def no_undocumented_server_error(ctx, response, case):
    """A 5xx is acceptable only where the spec defines it, with our JSON error body."""
    if response.status_code < 500:
        return None
    documented = case.operation.definition.raw.get("responses", {})
    assert str(response.status_code) in documented, (
        f"undocumented {response.status_code}: {response.text[:200]}")
    body = response.json()
    assert body.get("title") != "Internal error", f"unexpected error: {body}"
    assert body.get("message"), body
    return None


# The spec defines 500/501/502 for well-formed requests that fail (a missing
# reservation, an unknown datanode): the generic "no server error" check is
# replaced by one that allows exactly those. Positive-data acceptance cannot
# hold where valid JSON names an unknown flavor, location or reservation.
CHECKED = [
    oac.status_code_conformance,
    oac.content_type_conformance,
    oac.response_schema_conformance,
    oac.response_headers_conformance,
    oac.negative_data_rejection,
    oac.unsupported_method,
]


@schema.parametrize()
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_api_conforms_to_its_document(case):
    """Generated valid and invalid requests: no undocumented error, no contradiction."""
    case.call_and_validate(checks=[*CHECKED, no_undocumented_server_error])
