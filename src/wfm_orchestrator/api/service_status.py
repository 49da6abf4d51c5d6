"""GET ephemeralservice/status[/{ephemeralservice_id | user_id}]."""

from __future__ import annotations

import falcon

from ..errors import InvalidRequest, NotFound
from ..model import check_name, check_user
from ..services import ServiceManager
from .errors import APIError


class AllServiceStatus:
    def __init__(self, services: ServiceManager):
        self.services = services

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.services.statuses()


class Release:
    """DELETE ephemeralservice/release/{service_name}: stop the service, free its resources."""

    def __init__(self, services: ServiceManager):
        self.services = services

    def on_delete(self, req: falcon.Request, resp: falcon.Response, service_name: str) -> None:
        check_name(service_name, "service_name")
        try:
            resp.media = self.services.release(service_name)
        except NotFound as e:
            raise APIError(500, "Release failed", f"{e}: not found or already released") \
                from None


class ServiceStatus:
    """A service name is looked up first; otherwise the segment is a user id (a list)."""

    def __init__(self, services: ServiceManager):
        self.services = services

    def on_get(self, req: falcon.Request, resp: falcon.Response, ident: str) -> None:
        check_name(ident, "ephemeralservice_id")
        status = self.services.status(ident)
        if status is not None:
            resp.media = status
            return
        try:
            check_user(ident, "user_id")
        except InvalidRequest:
            raise InvalidRequest(
                "ephemeralservice_id",
                f"no service named {ident!r}, and it is not a valid user id either") from None
        resp.media = self.services.statuses(user=ident)
