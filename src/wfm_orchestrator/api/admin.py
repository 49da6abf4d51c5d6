"""The administrator's endpoints (``wfm-orchestrator`` commands talk to them): datanodes,
their drain and resume, reservations as the Resource Manager holds them.

Outside the specification's versions, like /metrics and /ui; every one is admin only
(its action in auth.py's matrix names no other role). Served by worker threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import falcon

from ..errors import ConfigError, InvalidRequest, NotFound, ReloadRefused
from ..model import ReservationState, check_name, check_user
from ..reservation import Reservation
from ..resource_manager import ResourceManager, iso_time
from . import paging
from .errors import APIError
from .media import read_json
from .serving import answer_after

MAX_REASON = 1024


def datanode_item(view) -> dict[str, Any]:
    return {"name": view.name, "location": view.location or "", "state": view.state.value,
            "reason": view.reason, "cores": view.cores, "free_cores": view.free_cores,
            "msize": view.msize, "free_msize": view.free_msize, "ssize": view.ssize,
            "free_ssize": view.free_ssize}


def reservation_item(rec: Reservation, position: int) -> dict[str, Any]:
    req = rec.request
    return {"name": rec.name, "user": req.user, "type": req.type, "state": rec.state.value,
            "servers": req.servers, "cores": req.cores, "msize": req.msize, "ssize": req.ssize,
            "locations": list(req.locations), "flavor": req.flavor or "",
            "position": position, "detail": rec.detail,
            "datanodes": [p.server for p in rec.placement or ()],
            "bound_job": rec.bound_job, "created": iso_time(rec.created),
            "updated": iso_time(rec.updated)}


class Datanodes:
    """GET /admin/datanodes: every datanode, its capacity, what is free, its state; paged
    (api/paging.py)."""

    auth_actions = {"GET": "admin.read"}

    def __init__(self, rm: ResourceManager):
        self.rm = rm

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        paging.answer_configured(req, resp, "d", list(self.rm.config.datanodes),
                                 lambda names: [datanode_item(v)
                                                for v in self.rm.datanodes(names)],
                                 self._chunks)

    def _chunks(self, names: list[str]) -> Iterator[list[dict[str, Any]]]:
        views = self.rm.datanodes(names)  # one snapshot, under the lock
        for i in range(0, len(views), paging.CHUNK):
            yield [datanode_item(v) for v in views[i:i + paging.CHUNK]]


class Drain:
    """POST /admin/datanodes/{name}/drain {"reason": "..."}: no new placement there."""

    auth_actions = {"POST": "datanode.drain"}

    def __init__(self, rm: ResourceManager):
        self.rm = rm

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        body = read_json(req)
        reason = body.get("reason") if isinstance(body, dict) else None
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidRequest("reason", "required: a non-empty string saying why "
                                 "(shown in server/resources and the status)")
        if len(reason) > MAX_REASON or "\0" in reason:
            raise InvalidRequest("reason", f"at most {MAX_REASON} characters, no NUL byte")
        answer_after(req, self.rm.drain(_datanode(self.rm, name), reason.strip()))
        resp.media = _one(self.rm, name)


class Resume:
    """POST /admin/datanodes/{name}/resume: the datanode takes placements again."""

    auth_actions = {"POST": "datanode.drain"}

    def __init__(self, rm: ResourceManager):
        self.rm = rm

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        answer_after(req, self.rm.resume(_datanode(self.rm, name)))
        resp.media = _one(self.rm, name)


def _datanode(rm: ResourceManager, name: str) -> str:
    check_name(name, "name")
    if name not in rm.config.datanodes:
        raise NotFound("datanode", name)
    return name


def _one(rm: ResourceManager, name: str) -> dict[str, Any]:
    return next(datanode_item(v) for v in rm.datanodes() if v.name == name)


class Reservations:
    """GET /admin/reservations[?user=U][&state=S]: live reservations (RELEASED ones
    only when asked by state), in arrival order; paged (api/paging.py)."""

    auth_actions = {"GET": "admin.read"}

    def __init__(self, rm: ResourceManager):
        self.rm = rm

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        user = req.get_param("user")
        if user is not None:
            check_user(user)
        state = req.get_param("state")
        if state is not None:
            try:
                wanted = ReservationState(state.upper())
            except ValueError:
                raise InvalidRequest("state", f"unknown state {state!r} (valid: "
                                     f"{', '.join(s.value for s in ReservationState)})") from None
        after, limit = paging.requested(req, "r")
        users = None if user is None else (user,)

        def keep(rec: Reservation) -> bool:
            return (rec.state == wanted if state is not None
                    else rec.state != ReservationState.RELEASED)

        if paging.streamed(req, limit):
            _, chunks = self.rm.listing(after, keep, users)
            paging.whole(resp, chunks(reservation_item, paging.CHUNK))
            return
        paging.answer(req, resp, self.rm.page(after, limit, keep, users, reservation_item),
                      "r", limit)


class OneReservation:
    """GET /admin/reservations/{name}."""

    auth_actions = {"GET": "admin.read"}

    def __init__(self, rm: ResourceManager):
        self.rm = rm

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        check_name(name)
        found = self.rm.snapshot(name)
        if found is None:
            raise NotFound("reservation", name)
        resp.media = reservation_item(*found)


class Reload:
    """POST /admin/reload: read wfm.conf again (reloading.py); the running configuration
    is kept when the file has errors (400, each with file:line) or would not hold the
    reservations (409)."""

    auth_actions = {"POST": "config.reload"}

    def __init__(self, rm: ResourceManager):
        self.rm = rm

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        from ..reloading import reload

        try:
            answer, ticket = reload(self.rm.config, self.rm)
        except ConfigError as e:
            raise APIError(400, "Invalid configuration",
                           f"{len(e.problems)} error(s), the running configuration is kept: "
                           + "; ".join(str(p) for p in e.problems), "file") from None
        except ReloadRefused as e:
            raise APIError(409, "Reload refused",
                           f"{e}; the running configuration is kept") from None
        answer_after(req, ticket)
        resp.media = answer
