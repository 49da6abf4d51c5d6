"""Who leads (docs/ha.md): ``GET /v1.0.0/leader`` on every instance, and the standby's
application, which serves nothing that changes state.

A standby answers every request 503 with the leader's URL, in the ``X-WFM-Leader``
header and in the JSON body's ``leader``, except ``GET /v1.0.0/leader`` (the role,
public: load balancers and ``deploy/hacluster status`` read it without a token). It
reads no state and checks no token: it holds none, and says only where the leader is.
The clients (plugin, admin command line) do not follow the URL: they ask the
orchestrators they were configured with, in turn (a 503 passes to the next).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import falcon
import ujson

from .auth import PUBLIC

ROLE_PATH = "/v1.0.0/leader"
LEADER_HEADER = "X-WFM-Leader"

# () -> (role, leader URL or None, epoch or None)
RoleOf = Callable[[], tuple[str, str | None, int | None]]


def role_document(role: RoleOf) -> dict[str, Any]:
    name, url, epoch = role()
    return {"role": name, "leader": url, "epoch": epoch}


class Role:
    """GET /v1.0.0/leader on the leader (or a single SQLite orchestrator)."""

    auth_actions = {"GET": PUBLIC}

    def __init__(self, role: RoleOf) -> None:
        self._role = role

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = role_document(self._role)


def standby_app(leader_url: Callable[[], str | None], epoch: Callable[[], int | None]
                ) -> Callable[[dict, Callable], Iterable[bytes]]:
    """The WSGI application of a standby: ``leader_url()`` as last read from the lease."""

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        url = leader_url()
        path = environ.get("PATH_INFO", "").rstrip("/")
        headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
        if url:
            headers.append((LEADER_HEADER, url))
        if path == ROLE_PATH and environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            status = "200 OK"
            body = {"role": "standby", "leader": url, "epoch": epoch()}
        else:
            status = "503 Service Unavailable"
            where = f"the leader is {url}" if url else "no orchestrator leads right now"
            body = {"title": "Not the leader",
                    "description": f"this orchestrator is a standby: {where}",
                    "message": f"this orchestrator is a standby: {where}",
                    "leader": url}
            headers.append(("Retry-After", "1"))
        data = ujson.dumps(body).encode()
        headers.append(("Content-Length", str(len(data))))
        start_response(status, headers)
        return [data]

    return app
