"""Falcon application: routes under every version prefix, JSON through ujson, logging."""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import falcon

from ..binding import Binding
from ..config import Config
from ..job_services import JobServices
from ..resource_manager import ResourceManager
from ..services import ServiceManager
from ..steps import StepManager
from . import (
    admin,
    dashboard,
    errors,
    info,
    job_services,
    leadership,
    openapi,
    reservations,
    service_status,
    steps,
)
from .auth import Authorization, build_verifier
from .media import MAX_BODY, json_handler
from .metrics import Metrics, MetricsPage
from .serving import loop_request

log = logging.getLogger("wfm_orchestrator.access")

# The spec's canonical paths mix v1.0.0 and v2.0.0; the IO-SEA Session Manager
# puts v2.0.0 before everything and the public IO-SEA Resource Manager served
# v2.1.0. Every endpoint is served under all three (same resource, no redirect).
VERSIONS = ("v1.0.0", "v2.0.0", "v2.1.0")


class AccessLog:
    """One line per request: method, path, status, milliseconds.

    The line is formatted here, in the same shape as the other log lines, and
    written to the access logger's handlers' streams: building a LogRecord per
    request through ``log.info`` cost a quarter of a status request's CPU.
    """

    def __init__(self, metrics: Metrics | None = None) -> None:
        # Each request's route, method, code and seconds (api/metrics.py), from the
        # same two clock readings as the log line.
        self._observe = metrics.observe_request if metrics is not None else None
        self._second = -1
        self._stamp = ""
        self._lock = threading.Lock()
        self._batch: list[str] = []  # lines of the event loop's turn (its thread only)

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()
        if req.content_length is not None and req.content_length > MAX_BODY:
            raise errors.APIError(413, "Request body too large",
                                  f"the body is {req.content_length} bytes; "
                                  f"at most {MAX_BODY} are accepted")

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        started = getattr(req.context, "started", None)
        seconds = time.perf_counter() - started if started else 0.0
        if self._observe is not None:
            self._observe(req.uri_template, req.method, resp.status_code, seconds)
        if not log.isEnabledFor(logging.INFO):
            return
        ms = seconds * 1000
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        line = (f"{self._stamp},{int((now - second) * 1000):03d} INFO {log.name}: "
                f"{req.method} {req.path} {resp.status_code} {ms:.1f}ms\n")
        loop = loop_request(req)
        if loop is not None:
            # The server's event loop writes its lines once per turn: one system
            # call for all the requests it served (a write per line cost ~10%).
            self._batch.append(line)
            if len(self._batch) == 1:
                loop.at_turn_end(self._write_batch)
            return
        self._write(line)

    def _write_batch(self) -> None:
        text, self._batch = "".join(self._batch), []
        self._write(text)

    def _write(self, text: str) -> None:
        streams = [h.stream for h in _handlers(log) if isinstance(h, logging.StreamHandler)]
        with self._lock:
            for stream in streams:
                stream.write(text)
                if stream is not sys.stderr:  # stderr is line-buffered already
                    stream.flush()


def _handlers(logger: logging.Logger) -> list[logging.Handler]:
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        found.extend(current.handlers)
        current = current.parent if current.propagate else None
    return found


def routes(config: Config, rm: ResourceManager, services: ServiceManager,
           step_manager: StepManager | None = None) -> list[tuple[str, object]]:
    """(path without version prefix, resource) for every endpoint."""
    binding = Binding(rm, services, rm.accounts)
    return [
        ("/ephemeralservice/reserve", reservations.Reserve(rm)),
        ("/server/allocation/{service_name}", reservations.Allocation(binding)),
        ("/server/jobservice", job_services.JobService(
            JobServices(config, rm, services, services.slurm, rm.accounts))),
        ("/server/resources/all", reservations.AllServerResources(rm)),
        ("/server/resources/{server_name}", reservations.ServerResources(rm)),
        ("/location/list", info.Locations(config)),
        ("/ephemeralservice/flavors", info.Flavors(config)),
        ("/ephemeralservice/status", service_status.AllServiceStatus(services, binding)),
        ("/ephemeralservice/status/{ident}", service_status.ServiceStatus(services, binding)),
        ("/ephemeralservice/release/{service_name}", service_status.Release(services, binding)),
        ("/step/launch", steps.Launch(step_manager)),
        ("/step/progress", steps.Progress(step_manager)),
        ("/step/status", steps.AllStepStatus(step_manager)),
        ("/step/status/{ident}", steps.StepStatus(step_manager)),
        ("/step/abort/{step_id}", steps.Abort(step_manager)),
    ]


def nonblocking_requests(table: list[tuple[str, object]]) -> Callable[[str, str], bool]:
    """(method, path) -> True when the endpoint never blocks (served on the event loop).

    A resource says so with ``nonblocking = True``: its handlers only take
    short locks, and leave their commits to ``serving.answer_after`` instead
    of waiting for them (api/serving.py).
    """
    templates = [path for path, resource in table if getattr(resource, "nonblocking", False)]
    alternatives = "|".join(re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(t)) for t in templates)
    versions = "|".join(re.escape(v) for v in VERSIONS)
    pattern = re.compile(rf"/(?:{versions})(?:{alternatives})/?|/openapi\.json")
    match = pattern.fullmatch

    def nonblocking(method: str, path: str) -> bool:
        return match(path) is not None

    return nonblocking


def create_app(config: Config, rm: ResourceManager, services: ServiceManager,
               step_manager: StepManager | None = None) -> falcon.App:
    return build_api(config, rm, services, step_manager)[0]


def build_api(config: Config, rm: ResourceManager, services: ServiceManager,
              step_manager: StepManager | None = None,
              role: leadership.RoleOf | None = None
              ) -> tuple[falcon.App, Callable[[str, str], bool]]:
    """The application, and which of its requests the server may serve on its event loop.
    ``role``: what GET /v1.0.0/leader says (default: the leader, no lease)."""
    verifier = build_verifier(config)
    metrics = Metrics()
    metrics.watch(rm, services, step_manager)
    middleware: list[Any] = [AccessLog(metrics)]
    if verifier is not None:
        # With auth = none every request is the anonymous admin, who may do
        # everything (identity_of's default): there is nothing to check.
        middleware.append(Authorization(verifier))
    app = falcon.App(middleware=middleware, cors_enable=False)
    handler = json_handler()
    app.req_options.media_handlers[falcon.MEDIA_JSON] = handler
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = handler
    # A request without Content-Type (the Session Manager's GETs) is read as JSON.
    app.req_options.default_media_type = falcon.MEDIA_JSON
    app.req_options.strip_url_path_trailing_slash = True
    errors.install(app)
    table = routes(config, rm, services, step_manager)
    for path, resource in table:
        for version in VERSIONS:
            app.add_route(f"/{version}{path}", resource)
    for path, resource in operator_routes(config, rm, services, step_manager, metrics, role):
        app.add_route(path, resource)
    app.add_route("/openapi.json", openapi.OpenAPI([p for p, _ in table],
                                                   bearer=verifier is not None, config=config))
    return app, nonblocking_requests(table)


def operator_routes(config: Config, rm: ResourceManager, services: ServiceManager,
                    step_manager: StepManager | None, metrics: Metrics,
                    role: leadership.RoleOf | None = None) -> list[tuple[str, object]]:
    """The operators' paths, outside the specification's versions: metrics, the dashboard
    and the administrator's endpoints (api/admin.py).

    Served by worker threads (none is ``nonblocking``): a scrape or an overview reads
    every record, which the event loop's other connections should not wait for.
    """
    return [
        ("/metrics", MetricsPage(metrics)),
        ("/ui", dashboard.Page()),
        *((f"/ui/{name}", dashboard.Asset(name)) for name in dashboard.ASSETS),
        ("/ui/overview", dashboard.Overview(config, rm, services, step_manager)),
        ("/admin/datanodes", admin.Datanodes(rm)),
        ("/admin/datanodes/{name}/drain", admin.Drain(rm)),
        ("/admin/datanodes/{name}/resume", admin.Resume(rm)),
        ("/admin/reservations", admin.Reservations(rm)),
        ("/admin/reservations/{name}", admin.OneReservation(rm)),
        ("/admin/reload", admin.Reload(rm)),
        (leadership.ROLE_PATH, leadership.Role(role or _single(config))),
    ]


def _single(config: Config) -> leadership.RoleOf:
    """The role of an orchestrator without a lease (SQLite): the leader, at its URL."""
    from ..lease import default_advertise_url

    url = config.advertise_url or default_advertise_url(config.listen)
    return lambda: ("leader", url, None)
