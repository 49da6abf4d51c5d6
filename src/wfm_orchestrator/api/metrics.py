"""GET /metrics: the orchestrator in Prometheus' text format (prometheus_client at the edge).

Two kinds of figures, both read by one scrape:

* **State**, computed when scraped (``StateCollector``): datanodes' capacity and free
  resources with their state, reservations by state, the queue, steps by status. Nothing
  is updated on the request path for them: the use cases already hold that state.
* **Events**, recorded as they happen by plain callbacks the lower layers expose
  (``Store.on_commit``, ``SlurmClient.observe``, ``ResourceManager.on_held``) and by the
  access log (each request's route, method, code and seconds). They go into
  ``Recorder`` tables (a lock and a list of bucket counts per label set, ~0.5 µs) rather
  than prometheus_client's own Histogram (~2.5 µs with ``labels()``: a tenth of a status
  request's CPU budget of 1%, benchmarks/README.md); the tables become histograms only
  when scraped. The plugin's calls are the requests of ``server/allocation``: read from
  the same table, no second recording.

Nothing below ``api/`` imports prometheus_client (tests/unit/test_metrics.py checks it).
Names, labels and a scrape configuration: docs/operations.md.
"""

from __future__ import annotations

import bisect
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import falcon
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..model import DatanodeState
from ..resource_manager import ResourceManager
from ..services import ServiceManager
from ..slurm.client import SlurmClient
from ..steps import StepManager

INF = float("inf")
# Seconds: a status answered on the loop takes ~50 µs, a durable reserve ~150 µs.
REQUEST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A reserve placed at once waited 0 s; a queued one, until a release made room.
WAIT_BUCKETS = (0.0, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
SLURM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

DIMENSIONS = ("cores", "msize", "ssize")
PLUGIN_ROUTE = "/server/allocation/{service_name}"
PLUGIN_CALLS = {"GET": "bind", "DELETE": "unbind"}
UNMATCHED = "unmatched"  # requests no route matched (404s): one label, not one per path
_VERSION_PREFIX = re.compile(r"^/v\d+\.\d+\.\d+(?=/)")


class Recorder:
    """Observations by label set, as bucket counts: a histogram kept cheaply.

    ``observe(key, value)`` takes a lock held for a list increment; the key is any
    hashable (the access log passes its raw values, normalised only when scraped).
    """

    def __init__(self, buckets: Sequence[float]):
        self.bounds = list(buckets)
        self._rows: dict[Any, list[float]] = {}
        self._lock = threading.Lock()
        self._width = len(self.bounds) + 2  # one count per bucket, +Inf, then the sum

    def observe(self, key: Any, value: float) -> None:
        i = bisect.bisect_left(self.bounds, value)  # first bound >= value ("le")
        with self._lock:
            row = self._rows.get(key)
            if row is None:
                row = self._rows[key] = [0] * self._width
            row[i] += 1
            row[-1] += value

    def rows(self) -> list[tuple[Any, list[float]]]:
        with self._lock:
            return [(key, list(row)) for key, row in self._rows.items()]

    def histogram(self, name: str, documentation: str, labels: Sequence[str],
                  rows: Iterable[tuple[Sequence[str], list[float]]] | None = None
                  ) -> HistogramMetricFamily:
        """The family of ``rows`` (default: every key, which must then be label tuples)."""
        family = HistogramMetricFamily(name, documentation, labels=list(labels))
        merged: dict[tuple[str, ...], list[float]] = {}
        for key, row in (self.rows() if rows is None else rows):
            key = tuple(key)
            if key in merged:
                merged[key] = [a + b for a, b in zip(merged[key], row, strict=True)]
            else:
                merged[key] = row
        for key, row in sorted(merged.items()):
            running = 0.0
            buckets = []
            for bound, count in zip([*self.bounds, INF], row[:-1], strict=True):
                running += count
                buckets.append((_bound(bound), running))
            family.add_metric(list(key), buckets, row[-1])
        return family


def _bound(value: float) -> str:
    return "+Inf" if value == INF else repr(float(value))


class Metrics:
    """Every figure of one orchestrator, and its registry (one per application)."""

    def __init__(self) -> None:
        self.requests = Recorder(REQUEST_BUCKETS)  # (uri_template, method, code)
        self.waits = Recorder(WAIT_BUCKETS)  # ()
        self.slurm = Recorder(SLURM_BUCKETS)  # (operation,)
        self.commits = Recorder(COMMIT_BUCKETS)  # ()
        self.batches = Recorder(BATCH_BUCKETS)  # ()
        self._counts_lock = threading.Lock()
        self.slurm_errors: dict[tuple[str, str], int] = {}
        self.commit_failures = 0
        self.jobs_replaced = 0
        self.duplicates_cancelled = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.datanodes: DatanodeLines | None = None
        self._routes: dict[str | None, str] = {}

    # --- what the lower layers and the access log call --------------------------

    def observe_request(self, template: str | None, method: str, code: int,
                        seconds: float) -> None:
        self.requests.observe((template, method, code), seconds)

    def observe_held(self, seconds: float) -> None:
        self.waits.observe((), seconds)

    def observe_slurm(self, operation: str, seconds: float, error: str) -> None:
        self.slurm.observe((operation,), seconds)
        if error:
            with self._counts_lock:
                key = (operation, error)
                self.slurm_errors[key] = self.slurm_errors.get(key, 0) + 1

    def observe_commit(self, writes: int, seconds: float, refused: bool) -> None:
        self.commits.observe((), seconds)
        self.batches.observe((), writes)
        if refused:
            with self._counts_lock:
                self.commit_failures += 1

    def observe_replaced(self) -> None:
        with self._counts_lock:
            self.jobs_replaced += 1

    def observe_duplicate(self) -> None:
        with self._counts_lock:
            self.duplicates_cancelled += 1

    def watch(self, rm: ResourceManager, services: ServiceManager,
              steps: StepManager | None) -> None:
        """Hook the use cases' callbacks and register the scrape-time collectors."""
        rm.on_held = self.observe_held
        rm.store.on_commit = self.observe_commit
        services.on_replaced = self.observe_replaced
        services.on_duplicate = self.observe_duplicate
        slurm = services.slurm
        if isinstance(slurm, SlurmClient):
            slurm.observe = self.observe_slurm
        self.datanodes = DatanodeLines(rm)
        self.registry.register(StateCollector(rm, services, steps))
        self.registry.register(_EventCollector(self))
        self.registry.register(ProcessCollector(registry=None))

    def render(self) -> bytes:
        head = self.datanodes.render().encode() if self.datanodes is not None else b""
        return head + generate_latest(self.registry)

    # --- scrape time ------------------------------------------------------------

    def route(self, template: str | None) -> str:
        """The route label of a URI template: without its version prefix (they are aliases)."""
        label = self._routes.get(template)
        if label is None:
            label = UNMATCHED if template is None else _VERSION_PREFIX.sub("", template)
            self._routes[template] = label
        return label

    def events(self) -> Iterator[Metric]:
        rows = [((self.route(t), m, str(c)), row) for (t, m, c), row in self.requests.rows()]
        yield self.requests.histogram(
            "wfm_http_request_seconds", "Time to answer a request in the application "
            "(a held answer's commit wait excluded: see wfm_store_commit_seconds)",
            ("route", "method", "code"), rows)
        plugin = [((PLUGIN_CALLS[m], c), row) for (r, m, c), row in rows
                  if r == PLUGIN_ROUTE and m in PLUGIN_CALLS]
        yield self.requests.histogram(
            "wfm_plugin_call_seconds", "The burst-buffer plugin's calls (server/allocation: "
            "bind = GET, unbind = DELETE) by answer code; any code but 200 is an error",
            ("call", "code"), plugin)
        yield self.waits.histogram(
            "wfm_reservation_wait_seconds", "From a reserve to holding resources "
            "(0 when placed at once)", ())
        yield self.slurm.histogram("wfm_slurm_call_seconds", "slurmrestd calls by operation "
                                   "(failed ones included)", ("operation",))
        errors = CounterMetricFamily("wfm_slurm_call_errors", "slurmrestd calls that failed, "
                                     "by operation and error class", labels=["operation",
                                                                             "error"])
        with self._counts_lock:
            counted = sorted(self.slurm_errors.items())
            failures = self.commit_failures
            replaced = self.jobs_replaced
            duplicates = self.duplicates_cancelled
        for (operation, error), n in counted:
            errors.add_metric([operation, error], n)
        yield errors
        yield self.commits.histogram("wfm_store_commit_seconds", "One group commit of the "
                                     "state database (one transaction, one fsync)", ())
        yield self.batches.histogram("wfm_store_commit_batch_size", "Writes (requests' and "
                                     "bookkeeping's) in one group commit", ())
        yield CounterMetricFamily("wfm_store_commit_failures", "Group commits the state "
                                  "database refused (their requests were answered 500)",
                                  value=failures)
        yield CounterMetricFamily("wfm_service_jobs_replaced", "Service jobs Slurm kept "
                                  "PENDING after their binding, cancelled and replaced "
                                  "(stuck_job_timeout)", value=replaced)
        yield CounterMetricFamily("wfm_service_jobs_duplicate_cancelled", "Second Slurm "
                                  "jobs of one reservation (carrying its tag, not its "
                                  "recorded job) cancelled", value=duplicates)


class _EventCollector:
    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self.metrics.events()


# The per-datanode families: (name, help). Rendered by DatanodeLines, not by
# prometheus_client: see its docstring.
DATANODE_FAMILIES = (
    ("wfm_datanode_capacity", "A datanode's capacity: cores, msize and ssize in MB"),
    ("wfm_datanode_free", "What is free on a datanode (same units as wfm_datanode_capacity)"),
    ("wfm_datanode_state", "1 for the datanode's state (up, drained, down), 0 for the others"),
)


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class DatanodeLines:
    """The per-datanode gauges in the text format, from label strings made once.

    They are most of a scrape's samples (9 a datanode: capacity and free in three
    dimensions, and the state), and prometheus_client's ``generate_latest`` spends
    ~7 µs a sample validating and escaping label names and values: 100 datanodes made a
    scrape 8.6 ms of CPU, 1,000 would make it ~70 ms, 7% of a CPU at one scrape a
    second. Only the free values change between scrapes (capacity and state change with
    the configuration or a drain): everything else of a datanode is cached as text,
    keyed by what it shows. tests/unit/test_metrics.py checks the lines against
    prometheus_client's own rendering of the same families.
    """

    def __init__(self, rm: ResourceManager):
        self.rm = rm
        self._cache: dict[tuple, tuple[str, tuple[str, ...], str]] = {}

    def _parts(self, node: Any) -> tuple[str, tuple[str, ...], str]:
        key = (node.name, node.location, node.state, node.cores, node.msize, node.ssize)
        parts = self._cache.get(key)
        if parts is None:
            if len(self._cache) > 4 * len(self.rm.config.datanodes) + 64:
                self._cache.clear()  # states and capacities changed many times
            name, where = _label_value(node.name), _label_value(node.location or "")
            labels = [f'{{datanode="{name}",dimension="{dim}",location="{where}",'
                      f'state="{node.state.value}"}} ' for dim in DIMENSIONS]
            capacity = "".join(f"wfm_datanode_capacity{label}{getattr(node, dim)}\n"
                               for label, dim in zip(labels, DIMENSIONS, strict=True))
            free = tuple(f"wfm_datanode_free{label}" for label in labels)
            state = "".join(f'wfm_datanode_state{{datanode="{name}",state="{each.value}"}} '
                            f"{int(node.state == each)}\n" for each in DatanodeState)
            parts = self._cache[key] = (capacity, free, state)
        return parts

    def render(self) -> str:
        capacity: list[str] = []
        free: list[str] = []
        state: list[str] = []
        for node in self.rm.datanodes():
            cap_text, free_labels, state_text = self._parts(node)
            capacity.append(cap_text)
            free.extend((free_labels[0], str(node.free_cores), "\n",
                         free_labels[1], str(node.free_msize), "\n",
                         free_labels[2], str(node.free_ssize), "\n"))
            state.append(state_text)
        out = []
        for (name, documentation), lines in zip(DATANODE_FAMILIES, (capacity, free, state),
                                                strict=True):
            out.append(f"# HELP {name} {documentation}\n# TYPE {name} gauge\n")
            out.extend(lines)
        return "".join(out)


class StateCollector:
    """Gauges read from the use cases when scraped (a few short lock holds); the
    per-datanode ones are DatanodeLines'."""

    def __init__(self, rm: ResourceManager, services: ServiceManager,
                 steps: StepManager | None, clock=time.time):
        self.rm = rm
        self.services = services
        self.steps = steps
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        counts = self.rm.counts()
        by_state = GaugeMetricFamily("wfm_reservations", "Reservations by state (RELEASED: "
                                     "until forgotten after released_retention)",
                                     labels=["state"])
        for each, n in counts.by_state.items():
            by_state.add_metric([each.value], n)
        yield by_state
        yield GaugeMetricFamily("wfm_queue_length", "Reservations waiting for resources",
                                value=counts.queued)
        oldest = 0.0 if counts.oldest_queued is None else \
            max(0.0, self.clock() - counts.oldest_queued)
        yield GaugeMetricFamily("wfm_queue_oldest_wait_seconds", "How long the queue's head "
                                "has waited (0 when the queue is empty)", value=oldest)
        steps = GaugeMetricFamily("wfm_steps", "Workflow steps by status (as step/status "
                                  "shows them)", labels=["status"])
        if self.steps is not None:
            for status, n in sorted(self.steps.counts().items()):
                steps.add_metric([status], n)
        yield steps
        problem = self.services.follower.problem
        yield GaugeMetricFamily("wfm_slurm_reachable", "0 while the job follower cannot reach "
                                "Slurm, else 1 (also 1 without Slurm configured)",
                                value=0 if problem else 1)


class MetricsPage:
    """GET /metrics (Prometheus' text format 0.0.4)."""

    auth_actions = {"GET": "metrics"}

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = self.metrics.render()
