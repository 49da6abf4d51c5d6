"""GET ephemeralservice/status[/{ephemeralservice_id | user_id}]."""

from __future__ import annotations

import falcon

from ..errors import InvalidRequest
from ..model import check_name, check_user
from ..resource_manager import ResourceManager


class AllServiceStatus:
    def __init__(self, rm: ResourceManager):
        self.rm = rm

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.rm.statuses()


class ServiceStatus:
    """A service name is looked up first; otherwise the segment is a user id (a list)."""

    def __init__(self, rm: ResourceManager):
        self.rm = rm

    def on_get(self, req: falcon.Request, resp: falcon.Response, ident: str) -> None:
        check_name(ident, "ephemeralservice_id")
        status = self.rm.service_status(ident)
        if status is not None:
            resp.media = status
            return
        try:
            check_user(ident, "user_id")
        except InvalidRequest:
            raise InvalidRequest(
                "ephemeralservice_id",
                f"no service named {ident!r}, and it is not a valid user id either") from None
        resp.media = self.rm.statuses(user=ident)
