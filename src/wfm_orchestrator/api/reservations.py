"""Resource Manager endpoints: reserve, server/allocation, server/resources."""

from __future__ import annotations

from typing import Any

import falcon

from ..binding import Binding, MustAskSlurm
from ..errors import NotFound
from ..model import check_name, parse_reserve
from ..reservation import Reservation
from ..resource_manager import ResourceManager
from . import paging
from .errors import APIError
from .media import read_json
from .plugin_identity import acting_for
from .serving import HandToWorker, answer_after, loop_request


class Reserve:
    """POST ephemeralservice/reserve."""

    nonblocking = True  # may be served on the server's event loop (api/serving.py)
    auth_actions = {"POST": "reserve"}

    def __init__(self, rm: ResourceManager):
        self.rm = rm

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = parse_reserve(read_json(req), self.rm.config)
        rec, ticket = self.rm.reserve(request)
        answer_after(req, ticket)
        resp.media = reserve_answer(self.rm, rec)


def reserve_answer(rm: ResourceManager, rec: Reservation) -> dict[str, Any]:
    """The answer to a reserve: the name, the state, and where it waits if queued."""
    body = {"name": rec.name, "status": rec.state.value, "message": "reserved"}
    if rec.state.value == "QUEUED":
        found = rm.snapshot(rec.name)
        position = found[1] if found else 0
        body["message"] = (f"queued at position {position}: {rec.detail}"
                           if rec.detail.startswith("waiting for") and "limit" in rec.detail
                           else f"not enough resources now: queued at position {position}")
    return body


class Allocation:
    """GET / DELETE server/allocation/{service_name} (used by the burst-buffer plugin).

    The plugin says which job (``job_id``) and uid it acts for; binding.py decides.
    """

    nonblocking = True  # may be served on the server's event loop (api/serving.py)
    auth_actions = {"GET": "allocation", "DELETE": "allocation"}

    def __init__(self, binding: Binding):
        self.binding = binding

    def on_get(self, req: falcon.Request, resp: falcon.Response, service_name: str) -> None:
        check_name(service_name, "service_name")
        who = acting_for(req, "job_id", "uid")
        try:
            body, ticket = self.binding.bind(service_name, who["job_id"], who["uid"],
                                             may_block=loop_request(req) is None)
        except NotFound as e:
            raise APIError(500, "Reservation missing", str(e)) from None
        except MustAskSlurm:
            raise HandToWorker() from None
        answer_after(req, ticket)
        resp.media = body

    def on_delete(self, req: falcon.Request, resp: falcon.Response, service_name: str) -> None:
        check_name(service_name, "service_name")
        who = acting_for(req, "job_id")
        try:
            ticket = self.binding.unbind(service_name, who["job_id"])
        except NotFound as e:
            raise APIError(502, "Allocation not found", str(e)) from None
        answer_after(req, ticket)
        resp.media = {"name": service_name, "message": "allocation released"}


class ServerResources:
    """GET server/resources/{server_name} and server/resources/all."""

    nonblocking = True  # may be served on the server's event loop (api/serving.py)
    auth_actions = {"GET": "resources"}

    def __init__(self, rm: ResourceManager):
        self.rm = rm

    def on_get(self, req: falcon.Request, resp: falcon.Response, server_name: str) -> None:
        check_name(server_name, "server_name")
        try:
            resp.media = self.rm.resources(server_name)
        except NotFound as e:
            valid = ", ".join(self.rm.config.datanodes)
            raise APIError(500, "Unknown datanode", f"{e} (datanodes: {valid})") from None


class AllServerResources:
    """GET server/resources/all: every datanode in inventory order; paged (api/paging.py)."""

    nonblocking = True  # may be served on the server's event loop (api/serving.py)
    auth_actions = {"GET": "resources"}

    def __init__(self, rm: ResourceManager):
        self.rm = rm

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        # Without a limit, rendered by a worker thread and streamed (api/paging.py: whole).
        paging.answer_configured(req, resp, "d", list(self.rm.config.datanodes),
                                 self.rm.all_resources,
                                 lambda names: self.rm.resources_chunks(names, paging.CHUNK))
