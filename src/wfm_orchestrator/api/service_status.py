"""GET ephemeralservice/status[/{ephemeralservice_id | user_id}]."""

from __future__ import annotations

import falcon

from ..auth import visible
from ..binding import Binding, NotUsable
from ..config import is_user_name
from ..errors import Forbidden, NotFound
from ..model import check_name
from ..reservation import Reservation
from ..services import ServiceManager
from . import paging
from .auth import identity_of
from .errors import APIError
from .plugin_identity import acting_for
from .serving import answer_after


class AllServiceStatus:
    """Every status the caller may read; with ``?uid=U`` (the plugin, for ``scontrol show
    bbstat`` asked by uid U) only that uid's user's services. Paged (api/paging.py)."""

    nonblocking = True  # may be served on the server's event loop (api/serving.py)
    auth_actions = {"GET": "service.read"}

    def __init__(self, services: ServiceManager, binding: Binding):
        self.services = services
        self.binding = binding

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        identity = identity_of(req)
        # Optional even for the plugin: Slurm 22.05 does not say who runs bbstat.
        uid = acting_for(req, optional=("uid",))["uid"]
        after, limit = paging.requested(req, "r")
        whole = paging.streamed(req, limit)
        # The uid's users' lists (an index of the resource manager): what it costs is
        # their length, not the list of every reservation's.
        users = None if uid is None else self.binding.users_of(uid)

        def keep(rec: Reservation) -> bool:
            return visible(identity, rec.request.user)

        if whole:
            paging.whole(resp, self.services.status_chunks(after, keep, users, paging.CHUNK))
            return
        paging.answer(req, resp, self.services.status_page(after, limit, keep, users), "r",
                      limit)


class Release:
    """DELETE ephemeralservice/release/{service_name}: stop the service, free its resources.

    With ``?job_id=N&uid=U`` (the plugin, for a ``destroy_persistent`` job; required from
    its role) only a service of uid U's user, and the status says which job stops it.
    """

    auth_actions = {"DELETE": "service.release"}

    def __init__(self, services: ServiceManager, binding: Binding):
        self.services = services
        self.binding = binding

    def on_delete(self, req: falcon.Request, resp: falcon.Response, service_name: str) -> None:
        check_name(service_name, "service_name")
        who = acting_for(req, "job_id", "uid")
        why = ""
        if who["uid"] is not None:
            try:
                self.binding.usable(service_name, who["uid"],
                                    self.services.status(service_name), verb="stop")
            except NotUsable as e:
                # 403 naming uid: the plugin tells a refusal from "released meanwhile" (500)
                # by the answer, not by its words. The same for a service of another user
                # and for none: nothing is revealed.
                raise Forbidden("uid", str(e)) from None
            job = f"job {who['job_id']}" if who["job_id"] is not None else "a job"
            why = f"stopped by {job} of uid {who['uid']} (destroy_persistent)"
        try:
            body, ticket = self.services.release(service_name, why)
        except NotFound as e:
            raise APIError(500, "Release failed", f"{e}: not found or already released") \
                from None
        answer_after(req, ticket)
        resp.media = body


class ServiceStatus:
    """A service name is looked up first; otherwise the segment is a user id (a list,
    paged like every list; ``[]`` for a name no service and no user has).

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
        after, limit = paging.requested(req, "r")  # checked whatever the segment names
        status = self.services.status(ident)
        who = acting_for(req, "uid", optional=("job_id",))
        uid = who["uid"]
        if uid is not None:
            try:
                resp.media = self.binding.usable(ident, uid, status, who["job_id"])
            except NotUsable as e:
                raise APIError(500, "Service not usable", str(e)) from None
            return
        if status is not None and visible(identity, status["user"]):
            resp.media = status
            return
        if not visible(identity, ident) or not is_user_name(ident):
            resp.media = []  # as a user id: nothing the caller may read, or no such user
            return
        if paging.streamed(req, limit):
            paging.whole(resp, self.services.status_chunks(after, users=(ident,),
                                                            size=paging.CHUNK))
            return
        paging.answer(req, resp, self.services.status_page(after, limit, users=(ident,)), "r",
                      limit)
