"""Domain errors -> HTTP responses, at the edge only.

Every error body is JSON with ``title`` and ``description`` (falcon's shape),
``message`` (the human-readable reason, read by the IO-SEA Session Manager)
and ``field`` when one request field is at fault.
"""

from __future__ import annotations

import logging
from typing import Any

import falcon
import ujson

from ..errors import (
    AlreadyAllocated,
    Forbidden,
    InvalidRequest,
    NoSlurm,
    NotFound,
    RequestFailed,
    StateNotLoaded,
    StillQueued,
    StoreError,
    WfmError,
)
from ..lease import LeaseLost

log = logging.getLogger("wfm_orchestrator.api")
# s a client is told to wait before sending again a request the state refused (503)
STATE_RETRY_AFTER = 2


class APIError(falcon.HTTPError):
    """An HTTP error whose body also carries ``message`` and, when known, ``field``."""

    def __init__(self, status: str | int, title: str, description: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(status, title=title, description=description, headers=headers)
        self.field = field

    def to_dict(self, obj_type=dict) -> dict[str, Any]:
        body = obj_type()
        body["title"] = self.title
        body["description"] = self.description
        body["message"] = self.description or self.title
        if self.field:
            body["field"] = self.field
        return body


def invalid(field: str, message: str) -> APIError:
    return APIError(400, "Invalid request", f"{field}: {message}", field)


def failed(status: int, title: str, message: str) -> APIError:
    return APIError(status, title, message)


def error_body(exc: falcon.HTTPError) -> str:
    """The JSON body of an error: ``title``, ``description``, ``message`` (and ``field``)."""
    body = exc.to_dict()
    if "message" not in body:
        body["message"] = body.get("description") or body.get("title", "")
    return ujson.dumps(body, ensure_ascii=False)


def serialize_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    """Every error as JSON with a ``message``, whatever the client accepts."""
    resp.content_type = falcon.MEDIA_JSON
    resp.text = error_body(exc)
    resp.append_header("Vary", "Accept")


def store_unavailable(method: str, path: str, error: StoreError) -> APIError:
    """The 500 of a write the state database refused or did not commit in time; the 503
    of a request that found the state not read again after such a refusal.

    One answer whichever thread served the request: raised through Falcon on
    a worker, rendered by api/serving.py for an answer held on the event loop.
    """
    log.error("%s %s: state database error: %s", method, path, error)
    if isinstance(getattr(error, "cause", error), LeaseLost):
        # Deposed (lease.py): this instance stops; a client tries the next orchestrator.
        return APIError(503, "Not the leader", str(error))
    if isinstance(error, StateNotLoaded):
        # Nothing was done (state_guard.py): the same request, sent again, is served
        # once the state is read again.
        return APIError(503, "State being read again", str(error),
                        headers={"Retry-After": str(STATE_RETRY_AFTER)})
    return APIError(500, "State database unavailable", str(error))


def install(app: falcon.App) -> None:
    app.set_error_serializer(serialize_error)

    def invalid_request(req, resp, ex: InvalidRequest, params):
        raise invalid(ex.field, ex.message)

    def not_found(req, resp, ex: NotFound, params):
        # Route handlers map NotFound to the spec's code where the spec names
        # one (500/502); reaching here means a plain unknown item.
        raise APIError(404, "Not found", str(ex))

    def forbidden(req, resp, ex: Forbidden, params):
        log.warning("%s %s: refused: %s", req.method, req.path, ex)
        raise APIError(403, "Forbidden", str(ex), ex.field)

    def request_failed(req, resp, ex: RequestFailed, params):
        raise APIError(500, "Request failed", ex.message)

    def queued(req, resp, ex: StillQueued, params):
        raise APIError(409, "Reservation queued", ex.message)

    def allocated(req, resp, ex: AlreadyAllocated, params):
        raise APIError(501, "Reservation already allocated", ex.message)

    def no_slurm(req, resp, ex: NoSlurm, params):
        raise APIError(500, "No Slurm configured", str(ex))

    def store_error(req, resp, ex: StoreError, params):
        raise store_unavailable(req.method, req.path, ex)

    def domain_error(req, resp, ex: WfmError, params):
        log.error("%s %s: %s: %s", req.method, req.path, type(ex).__name__, ex)
        raise APIError(500, "Request failed", str(ex))

    def unexpected(req, resp, ex: Exception, params):
        if isinstance(ex, falcon.HTTPError):
            raise ex
        log.exception("%s %s: unexpected error", req.method, req.path)
        raise APIError(500, "Internal error",
                       "unexpected error; the orchestrator log has the details")

    # Falcon picks the most specific handler by the exception's MRO.
    app.add_error_handler(Exception, unexpected)
    app.add_error_handler(WfmError, domain_error)
    app.add_error_handler(InvalidRequest, invalid_request)
    app.add_error_handler(NotFound, not_found)
    app.add_error_handler(Forbidden, forbidden)
    app.add_error_handler(RequestFailed, request_failed)
    app.add_error_handler(StillQueued, queued)
    app.add_error_handler(AlreadyAllocated, allocated)
    app.add_error_handler(NoSlurm, no_slurm)
    app.add_error_handler(StoreError, store_error)
