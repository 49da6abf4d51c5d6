"""GET /metrics, read back with prometheus_client's own parser."""

import ast
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from wfm_orchestrator.api.metrics import Metrics, Recorder
from wfm_orchestrator.errors import SlurmUnavailable
from wfm_orchestrator.slurm import SlurmClient

from ..conftest import ROOT
from .test_slurm_client import FakeSession, captured, jwt, refused


def reserve(client, name, cores=8, servers=1, user="alice"):
    body = {"name": name, "user": user, "user_slurm_token": "t", "type": "GBF",
            "servers": servers,
            "attributes": {"cores": cores, "gssize": 10, "mountpoint": "/m"}}
    r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=body)
    assert r.status_code == 200, r.text
    return r.json


def scrape(client):
    r = client.simulate_get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def value(families, name, **labels):
    """The sample ``name`` with exactly these labels (among others), or a KeyError."""
    family = families[name.removesuffix("_total").removesuffix("_bucket")
                      .removesuffix("_count").removesuffix("_sum")]
    found = [s.value for s in family.samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    if len(found) != 1:
        raise KeyError(f"{name} {labels}: {len(found)} samples")
    return found[0]


def test_metrics_show_datanodes_reservations_and_the_queue(app_factory):
    """Capacity and free per datanode and dimension with its state; reservations by state;
    the queue's length and its head's wait."""
    client, rm, _ = app_factory()
    reserve(client, "alice_s_a", cores=8, servers=4)  # every core of the four datanodes
    assert reserve(client, "alice_s_b", cores=2)["status"] == "QUEUED"
    m = scrape(client)
    for node in ("dn1", "dn2", "dn3", "dn4"):
        where = {"datanode": node, "state": "up"}
        assert value(m, "wfm_datanode_capacity", dimension="cores", **where) == 8
        assert value(m, "wfm_datanode_free", dimension="cores", **where) == 0
        assert value(m, "wfm_datanode_capacity", dimension="msize", **where) == 16 * 1024
        assert value(m, "wfm_datanode_free", dimension="ssize", **where) < 1024 * 1024
        assert value(m, "wfm_datanode_state", datanode=node, state="up") == 1
        assert value(m, "wfm_datanode_state", datanode=node, state="drained") == 0
    assert value(m, "wfm_datanode_capacity", datanode="dn3", dimension="cores") == 8
    assert {s.labels["location"] for s in m["wfm_datanode_free"].samples} == {"loc1", "loc2"}
    assert value(m, "wfm_reservations", state="FREE") == 1
    assert value(m, "wfm_reservations", state="QUEUED") == 1
    assert value(m, "wfm_reservations", state="ALLOCATED") == 0
    assert value(m, "wfm_queue_length") == 1
    assert 0 <= value(m, "wfm_queue_oldest_wait_seconds") < 60


def test_reservation_wait_counts_each_placement_once(app_factory):
    """Placed at once: a wait of 0; queued then admitted after a release: one more
    observation; a retried reserve (same request) adds none."""
    client, rm, _ = app_factory()
    reserve(client, "alice_s_a", cores=8, servers=4)
    reserve(client, "alice_s_a", cores=8, servers=4)  # idempotent retry
    reserve(client, "alice_s_b", cores=2)
    m = scrape(client)
    assert value(m, "wfm_reservation_wait_seconds_count") == 1
    assert value(m, "wfm_reservation_wait_seconds_bucket", le="0.0") == 1
    r = client.simulate_delete("/v2.0.0/server/allocation/alice_s_a")
    assert r.status_code == 200, r.text
    m = scrape(client)
    assert value(m, "wfm_reservation_wait_seconds_count") == 2
    assert value(m, "wfm_reservations", state="FREE") == 1
    assert value(m, "wfm_queue_length") == 0
    assert value(m, "wfm_queue_oldest_wait_seconds") == 0


def test_request_latency_by_route_template_method_and_code(app_factory):
    """Routes are labelled by template without the version prefix (aliases merge); unknown
    paths share one label instead of one series per path."""
    client, _, _ = app_factory()
    reserve(client, "alice_s_a", cores=1)
    for version in ("v1.0.0", "v2.0.0"):
        assert client.simulate_get(f"/{version}/ephemeralservice/status/alice_s_a"
                                   ).status_code == 200
    client.simulate_get("/v1.0.0/no/such/path/1")
    client.simulate_get("/v1.0.0/no/such/path/2")
    m = scrape(client)
    status = {"route": "/ephemeralservice/status/{ident}", "method": "GET", "code": "200"}
    assert value(m, "wfm_http_request_seconds_count", **status) == 2
    assert value(m, "wfm_http_request_seconds_bucket", le="+Inf", **status) == 2
    assert value(m, "wfm_http_request_seconds_sum", **status) > 0
    assert value(m, "wfm_http_request_seconds_count", route="/ephemeralservice/reserve",
                 method="POST", code="200") == 1
    assert value(m, "wfm_http_request_seconds_count", route="unmatched", code="404") == 2
    routes = {s.labels["route"] for s in m["wfm_http_request_seconds"].samples}
    assert not any(r.startswith("/v") for r in routes), routes


def test_plugin_calls_are_the_allocation_answers(app_factory):
    """bind (GET server/allocation) and unbind (DELETE) by code: a bind of a queued or
    unknown reservation is an error (a non-200 code)."""
    client, _, _ = app_factory()
    reserve(client, "alice_s_a", cores=8, servers=4)
    reserve(client, "alice_s_b", cores=2)
    assert client.simulate_get("/v2.0.0/server/allocation/alice_s_a").status_code == 200
    assert client.simulate_get("/v2.0.0/server/allocation/alice_s_b").status_code != 200
    assert client.simulate_delete("/v2.0.0/server/allocation/alice_s_a").status_code == 200
    m = scrape(client)
    assert value(m, "wfm_plugin_call_seconds_count", call="bind", code="200") == 1
    assert value(m, "wfm_plugin_call_seconds_count", call="unbind", code="200") == 1
    errors = [s for s in m["wfm_plugin_call_seconds"].samples
              if s.name.endswith("_count") and s.labels["code"] != "200"]
    assert [(s.labels["call"], s.value) for s in errors] == [("bind", 1)]


def test_commit_batches_are_counted(app_factory):
    """Every durable request's commit is seen: batch sizes add up to the writes."""
    client, _, _ = app_factory()
    for i in range(5):
        reserve(client, f"alice_s_{i}", cores=1)
    m = scrape(client)
    batches = value(m, "wfm_store_commit_batch_size_count")
    assert batches >= 1
    assert value(m, "wfm_store_commit_batch_size_sum") >= 5
    assert value(m, "wfm_store_commit_seconds_count") == batches
    assert value(m, "wfm_store_commit_failures_total") == 0


def test_each_replaced_service_job_is_counted(app_factory):
    """The service manager's replacement callback (stuck_job_timeout) feeds the counter."""
    client, _, _ = app_factory()
    assert value(scrape(client), "wfm_service_jobs_replaced_total") == 0
    client.services.on_replaced()
    client.services.on_replaced()
    assert value(scrape(client), "wfm_service_jobs_replaced_total") == 2


def test_a_failing_commit_observer_does_not_stop_the_writer(app_factory):
    """The store calls its observer after each batch; an observer that raises is logged."""
    client, rm, store = app_factory()

    def broken(writes, seconds, refused):
        raise RuntimeError("observer bug")

    store.on_commit = broken
    reserve(client, "alice_s_a", cores=1)
    reserve(client, "alice_s_b", cores=1)  # answered: the writer is still running


def test_steps_by_status(app_factory):
    """Steps by status (empty without steps: the family is there, with no sample)."""
    client, _, _ = app_factory()
    m = scrape(client)
    assert m["wfm_steps"].type == "gauge"
    assert m["wfm_slurm_reachable"].samples[0].value == 1


def test_slurm_calls_are_timed_by_operation_and_errors_counted():
    """The client reports each public call: its operation, duration and error class."""
    metrics = Metrics()
    ok = captured("ping_ok")
    client = SlurmClient("http://slurm:6820", token_file=None, api_version="v0.0.38",
                         session=FakeSession(ok, refused(), refused(), refused(), refused(),
                                             refused(), refused()),
                         timeout=0.3)
    client._slurm_user_token = lambda: jwt("slurm")  # no token file in a unit test
    client.observe = metrics.observe_slurm
    client.ping()
    with pytest.raises(SlurmUnavailable):
        client.ping()
    registry = CollectorRegistry()
    registry.register(_Events(metrics))
    m = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert value(m, "wfm_slurm_call_seconds_count", operation="ping") == 2
    assert value(m, "wfm_slurm_call_errors_total", operation="ping",
                 error="SlurmUnavailable") == 1


class _Events:
    def __init__(self, metrics):
        self.metrics = metrics

    def collect(self):
        return self.metrics.events()


BOUNDS = (0.0, 0.001, 0.01, 0.1, 1.0, 10.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("ab"),
                          st.one_of(st.sampled_from(BOUNDS),
                                    st.floats(0, 100, allow_nan=False))), max_size=200))
def test_recorder_agrees_with_prometheus_clients_histogram(observations):
    """Our cheap Recorder and prometheus_client's Histogram, fed the same values, expose
    the same buckets, count and sum (bounds hit exactly included)."""
    bounds = BOUNDS
    registry = CollectorRegistry()
    theirs = Histogram("h", "doc", ["k"], buckets=bounds, registry=registry)
    ours = Recorder(bounds)
    for key, v in observations:
        theirs.labels(key).observe(v)
        ours.observe((key,), v)

    class Ours:
        def collect(self):
            yield ours.histogram("h", "doc", ["k"])

    mine = CollectorRegistry()
    mine.register(Ours())

    def samples(reg):
        family = next(f for f in text_string_to_metric_families(generate_latest(reg).decode())
                      if f.name == "h")
        return sorted((s.name, tuple(sorted(s.labels.items())), round(s.value, 6))
                      for s in family.samples if not s.name.endswith("_created"))

    assert samples(mine) == samples(registry)


def test_metrics_are_open_with_auth_none(client):
    """auth = none (loopback only): /metrics, /ui and /ui/overview answer without a token."""
    assert client.simulate_get("/metrics").status_code == 200
    assert client.simulate_get("/ui").status_code == 200
    assert client.simulate_get("/ui/overview").status_code == 200


def test_only_the_edge_imports_prometheus_client():
    """prometheus_client is imported in api/ only: domain, use cases and I/O call plain
    callbacks (docs/architecture.md)."""
    package = os.path.join(ROOT, "src", "wfm_orchestrator")
    offenders = []
    for folder, _, files in os.walk(package):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, package)
            with open(path, encoding="utf-8") as fh:
                tree = ast.parse(fh.read())
            for node in ast.walk(tree):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                if any(n.split(".")[0] == "prometheus_client" for n in names) and \
                        not rel.startswith("api" + os.sep):
                    offenders.append(rel)
    assert not offenders, offenders


def test_datanode_lines_agree_with_prometheus_clients_rendering(app_factory):
    """The per-datanode lines made from cached label text parse to the same families as
    prometheus_client's own rendering of them, before and after the free values change
    (escaping of a quote, a backslash and a new line included)."""
    from types import SimpleNamespace

    from prometheus_client.core import GaugeMetricFamily

    from wfm_orchestrator.api.metrics import DATANODE_FAMILIES, DIMENSIONS, DatanodeLines
    from wfm_orchestrator.model import DatanodeState

    client, rm, _ = app_factory()
    odd = SimpleNamespace(name='dn"x\\y', location="loc\n1", state=DatanodeState.DRAINED,
                          reason="", cores=4, free_cores=1, msize=10, free_msize=5, ssize=7,
                          free_ssize=0)
    real = rm.datanodes
    rm.datanodes = lambda: [*real(), odd]
    lines = DatanodeLines(rm)

    def reference():
        families = [GaugeMetricFamily(name, doc, labels=labels) for (name, doc), labels in
                    zip(DATANODE_FAMILIES, (["datanode", "location", "dimension", "state"],) * 2
                        + (["datanode", "state"],), strict=True)]
        for node in rm.datanodes():
            for dim in DIMENSIONS:
                where = [node.name, node.location or "", dim, node.state.value]
                families[0].add_metric(where, getattr(node, dim))
                families[1].add_metric(where, getattr(node, f"free_{dim}"))
            for each in DatanodeState:
                families[2].add_metric([node.name, each.value], int(node.state == each))

        class Collector:
            def collect(self):
                return families

        registry = CollectorRegistry()
        registry.register(Collector())
        return generate_latest(registry).decode()

    def parsed(text):
        return [(f.name, f.documentation, f.type, sorted((s.name, sorted(s.labels.items()),
                                                          s.value) for s in f.samples))
                for f in text_string_to_metric_families(text)]

    assert parsed(lines.render()) == parsed(reference())
    reserve(client, "alice_s_a", cores=3)
    odd.free_cores = 0
    assert parsed(lines.render()) == parsed(reference())
