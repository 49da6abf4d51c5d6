"""The live dashboard: GET /ui (a page and its two assets) and GET /ui/overview (its data).

The page, its script and its style ship in the package (``api/ui/``, package data):
no build step, nothing fetched from elsewhere. They are public: they hold no data. The
page reads ``/ui/overview`` every two seconds; with ``auth = keycloak`` that needs an
admin token, which the page asks for when answered 401 or 403 and keeps in the tab's
``sessionStorage`` (gone when the tab closes; never in a cookie, so no other site's page
can make the browser send it). With ``auth = none`` it just works. docs/operations.md.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import falcon

from ..config import Config
from ..model import ReservationState
from ..resource_manager import ResourceManager, iso_time
from ..services import ServiceManager
from ..steps import StepManager
from .auth import PUBLIC

# name -> content type: everything the page loads.
ASSETS = {"dashboard.js": "text/javascript; charset=utf-8",
          "dashboard.css": "text/css; charset=utf-8"}
PAGE = "dashboard.html"
MAX_ROWS = 500  # services, steps and queue entries sent to the page (counts are exact)
# The page's own script and style only; no inline script, nothing from elsewhere.
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
          "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath("ui", name).read_bytes()


def _static(resp: falcon.Response, body: bytes, content_type: str) -> None:
    resp.content_type = content_type
    resp.data = body
    resp.set_header("Cache-Control", "no-cache")
    resp.set_header("X-Content-Type-Options", "nosniff")
    resp.set_header("Content-Security-Policy", POLICY)


class Page:
    """GET /ui: the page (public: it holds no data)."""

    auth_actions = {"GET": PUBLIC}

    def __init__(self) -> None:
        self.body = _read(PAGE)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _static(resp, self.body, "text/html; charset=utf-8")


class Asset:
    """GET /ui/dashboard.js, /ui/dashboard.css (public)."""

    auth_actions = {"GET": PUBLIC}

    def __init__(self, name: str):
        self.body = _read(name)
        self.content_type = ASSETS[name]

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _static(resp, self.body, self.content_type)


class Overview:
    """GET /ui/overview: datanodes, reservations, the queue, services and steps (admin)."""

    auth_actions = {"GET": "overview"}

    def __init__(self, config: Config, rm: ResourceManager, services: ServiceManager,
                 steps: StepManager | None):
        self.config = config
        self.rm = rm
        self.services = services
        self.steps = steps

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = overview(self.config, self.rm, self.services, self.steps)
        resp.set_header("Cache-Control", "no-store")


def overview(config: Config, rm: ResourceManager, services: ServiceManager,
             steps: StepManager | None) -> dict[str, Any]:
    """The dashboard's data (documented in docs/api.md, "Operators' endpoints")."""
    now = rm.clock()
    counts = rm.counts()
    queue = [{"name": rec.name, "user": rec.request.user, "position": i + 1,
              "servers": rec.request.servers, "cores": rec.request.cores,
              "msize": rec.request.msize, "ssize": rec.request.ssize,
              "locations": list(rec.request.locations),
              "waiting": round(max(0.0, now - rec.created), 1)}
             for i, rec in enumerate(rm.queued(MAX_ROWS))]
    step_count = sum(steps.counts().values()) if steps is not None else 0
    return {
        "time": iso_time(now),
        "slurm": {"configured": bool(config.slurmrestd_url),
                  "problem": services.follower.problem},
        "datanodes": [
            {"name": n.name, "location": n.location or "", "state": n.state.value,
             "reason": n.reason, "cores": n.cores, "free_cores": n.free_cores,
             "msize": n.msize, "free_msize": n.free_msize, "ssize": n.ssize,
             "free_ssize": n.free_ssize}
            for n in rm.datanodes()],
        "reservations": {state.value: n for state, n in counts.by_state.items()},
        "queue": {"length": counts.queued,
                  "oldest_wait": 0.0 if counts.oldest_queued is None
                  else round(max(0.0, now - counts.oldest_queued), 1),
                  "items": queue},
        # Counted, not rendered: 0.5 s of every refresh with 100,000 reservations.
        "services": {"count": sum(n for state, n in counts.by_state.items()
                                  if state is not ReservationState.RELEASED),
                     "items": services.newest_live(MAX_ROWS)},
        "steps": {"count": step_count,
                  "items": steps.newest(MAX_ROWS) if steps is not None else []},
    }
