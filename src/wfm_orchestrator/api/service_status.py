"""GET ephemeralservice/status[/{ephemeralservice_id | user_id}]."""

from __future__ import annotations

import falcon

from ..auth import visible
from ..binding import Binding, NotUsable
from ..errors import InvalidRequest, NotFound
from ..model import check_name, check_user
from ..services import ServiceManager
from .auth import identity_of
from .errors import APIError
from .plugin_identity import acting_for
from .serving import answer_after


class AllServiceStatus:
    nonblocking = True  # may be served on the server's event loop (api/serving.py)
    auth_actions = {"GET": "service.read"}

    def __init__(self, services: ServiceManager):
        self.services = services

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        identity = identity_of(req)
        resp.media = [s for s in self.services.statuses() if visible(identity, s["user"])]


class Release:
    """DELETE ephemeralservice/release/{service_name}: stop the service, free its resources."""

    auth_actions = {"DELETE": "service.release"}

    def __init__(self, services: ServiceManager):
        self.services = services

    def on_delete(self, req: falcon.Request, resp: falcon.Response, service_name: str) -> None:
        check_name(service_name, "service_name")
        try:
            body, ticket = self.services.release(service_name)
        except NotFound as e:
            raise APIError(500, "Release failed", f"{e}: not found or already released") \
                from None
        answer_after(req, ticket)
        resp.media = body


class ServiceStatus:
    """A service name is looked up first; otherwise the segment is a user id (a list).

    A service the caller may not read is treated as unknown (never 403: its
    existence is not revealed). With ``?uid=U`` (the plugin, for a step job's
    ``wfm_use``), the segment is a service name only, and a service of another user
    is answered as missing (binding.py).
    """

    nonblocking = True  # may be served on the server's event loop (api/serving.py)
    auth_actions = {"GET": "service.read"}

    def __init__(self, services: ServiceManager, binding: Binding):
        self.services = services
        self.binding = binding

    def on_get(self, req: falcon.Request, resp: falcon.Response, ident: str) -> None:
        check_name(ident, "ephemeralservice_id")
        identity = identity_of(req)
        status = self.services.status(ident)
        uid = acting_for(req, "uid")["uid"]
        if uid is not None:
            try:
                resp.media = self.binding.usable(ident, uid, status)
            except NotUsable as e:
                raise APIError(500, "Service not usable", str(e)) from None
            return
        if status is not None and visible(identity, status["user"]):
            resp.media = status
            return
        try:
            check_user(ident, "user_id")
        except InvalidRequest:
            raise InvalidRequest(
                "ephemeralservice_id",
                f"no service named {ident!r}, and it is not a valid user id either") from None
        resp.media = [s for s in self.services.statuses(user=ident)
                      if visible(identity, s["user"])]
