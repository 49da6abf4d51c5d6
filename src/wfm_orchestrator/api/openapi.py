"""The OpenAPI 3 document of the API, served at GET /openapi.json.

It lists the specification's canonical paths; every path is also served
under the other version prefixes (/v1.0.0, /v2.0.0, /v2.1.0) as an alias.
A test compares it with the application's routes. It declares what the server
refuses (api/constraints.py, with the configured flavors, locations and tiers), the
paging parameters of every list and their next-page headers (api/paging.py).
"""

from __future__ import annotations

from typing import Any

import falcon

from ..config import Config
from ..model import ReservationState
from . import constraints
from .admin import MAX_REASON
from .constraints import NAME as _NAME
from .paging import CURSOR_PATTERNS, MAX_LIMIT, NEXT_CURSOR

# The version under which the specification names each path.
CANONICAL_VERSION = {"/server/allocation/{service_name}": "v2.0.0",
                     "/server/jobservice": "v2.0.0"}
DEFAULT_VERSION = "v1.0.0"

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["title", "message"],
        "properties": {
            "title": {"type": "string"},
            "description": {"type": "string"},
            "message": {"type": "string", "description": "the human-readable reason"},
            "field": {"type": "string", "description": "the request field at fault"},
        },
    },
    "ReserveResponse": {
        "type": "object",
        "required": ["name", "status", "message"],
        "properties": {
            "name": {"type": "string"},
            "status": {"type": "string", "enum": ["FREE", "QUEUED"]},
            "message": {"type": "string"},
        },
    },
    "Allocation": {
        "type": "object",
        "required": ["name", "servers", "properties"],
        "properties": {
            "name": {"type": "string"},
            "servers": {"type": "integer"},
            "properties": {"type": "array",
                           "items": {"$ref": "#/components/schemas/AllocationProperties"}},
        },
    },
    "AllocationProperties": {
        "type": "object",
        "required": ["server_name", "cores", "core_list", "msize", "ssize"],
        "properties": {
            "server_name": {"type": "string"},
            "cores": {"type": "integer"},
            "core_list": {"type": "array", "items": {"type": "integer"}},
            "msize": {"type": "integer"},
            "ssize": {"type": "integer"},
        },
    },
    "Released": {
        "type": "object",
        "required": ["name", "message"],
        "properties": {"name": {"type": "string"}, "message": {"type": "string"}},
    },
    "ServerResources": {
        "type": "object",
        "required": ["free_cores", "cores", "free_core_list", "core_list", "free_msize",
                     "msize", "free_ssize", "ssize"],
        "properties": {
            **{k: {"type": "integer"} for k in ("free_cores", "cores", "free_msize", "msize",
                                                "free_ssize", "ssize")},
            "free_core_list": {"type": "array", "items": {"type": "integer"}},
            "core_list": {"type": "array", "items": {"type": "integer"}},
            # Additions to the spec (#19): drained datanodes take no new placement.
            "state": {"type": "string", "enum": ["up", "drained", "down"],
                      "description": "up: takes new placements; drained: taken out by an "
                                     "administrator (existing services stay)"},
            "reason": {"type": "string", "description": "why it is not up ('' when up)"},
        },
    },
    "ServerResourcesEntry": {
        "type": "object",
        "required": ["server_name", "server_resources"],
        "properties": {
            "server_name": {"type": "string"},
            "server_resources": {"$ref": "#/components/schemas/ServerResources"},
        },
    },
    "ReleaseResponse": {
        "type": "object",
        "required": ["name", "message"],
        "properties": {"name": {"type": "string"}, "status": {"type": "string"},
                       "detail": {"type": "string"}, "message": {"type": "string"}},
    },
    "Location": {"type": "object", "required": ["name"],
                 "properties": {"name": {"type": "string"}}},
    "Flavor": {
        "type": "object",
        "required": ["name", "cores", "msize", "ssize"],
        "properties": {"name": {"type": "string"}, "cores": {"type": "integer"},
                       "msize": {"type": "integer"}, "ssize": {"type": "integer"}},
    },
    "ServiceStatus": {
        "type": "object",
        "required": ["user", "name", "status", "detail", "time"],
        "properties": {
            "user": {"type": "string"},
            "name": {"type": "string"},
            "status": {"type": "string", "enum": ["STAGINGIN", "STAGEDIN", "ALLOCATED",
                                                  "STAGINGOUT", "STAGEDOUT", "STOPPED",
                                                  "TEARDOWN"]},
            "detail": {"type": "string"},
            "time": {"type": "string", "format": "date-time"},
            "type": {"type": "string", "description": "the service type (an addition to "
                     "the spec, for scontrol show bbstat)"},
            "id": {"type": "integer", "description": "the reservation's number (an "
                   "addition: bbstat's bbid)"},
            "created": {"type": "string", "format": "date-time", "description": "when it "
                        "was reserved (an addition: bbstat's CreateTime)"},
            # Additions (#18), only for a job-scoped service (#BB_LUA wfm_job).
            "scope": {"type": "string", "enum": ["job"], "description": "job: the service "
                      "lives for one Slurm job, asked for in its batch script"},
            "job_id": {"type": "integer", "description": "the Slurm job it lives for"},
            "servers": {"type": "array", "items": {"type": "string"},
                        "description": "its datanodes (job-scoped services)"},
            "mountpoint": {"type": "string", "description": "its mount point, '' if none "
                           "(job-scoped services)"},
        },
    },
    "JobServiceResponse": {
        "type": "object",
        "required": ["name", "status", "message", "scope", "job_id"],
        "properties": {
            "name": {"type": "string"},
            "status": {"type": "string", "enum": ["FREE", "QUEUED", "ALLOCATED"]},
            "message": {"type": "string"},
            "scope": {"type": "string", "enum": ["job"]},
            "job_id": {"type": "integer"},
            "type": {"type": "string"},
            "mountpoint": {"type": "string"},
        },
    },
    "JobServicesReleased": {
        "type": "object",
        "required": ["job_id", "released", "message"],
        "properties": {"job_id": {"type": "integer"},
                       "released": {"type": "array", "items": {"type": "string"}},
                       "message": {"type": "string"}},
    },
    "StepLaunchResponse": {
        "type": "object",
        "required": ["name", "status", "message"],
        "properties": {"name": {"type": "string"}, "status": {"type": "string"},
                       "message": {"type": "string"}},
    },
    "StepProgressRequest": {
        "type": "object",
        "required": ["step_name", "datamover_name", "progress"],
        "properties": {"step_name": _NAME, "datamover_name": _NAME,
                       "progress": {"type": "string"},
                       "step_secret": {
                           "type": "string",
                           "description": "the step's secret, WFM_STEP_SECRET in the "
                                          "environment of its data mover jobs; a progress "
                                          "without it (or with another step's) gets 403"}},
    },
    "StepProgressResponse": {
        "type": "object",
        "required": ["step_name", "datamover_name", "message"],
        "properties": {"step_name": {"type": "string"}, "datamover_name": {"type": "string"},
                       "message": {"type": "string"}},
    },
    "StepStatus": {
        "type": "object",
        "required": ["user", "name", "status", "detail", "time"],
        "properties": {
            "user": {"type": "string"},
            "name": {"type": "string"},
            "status": {"type": "string", "enum": [
                "BOOT_FAIL", "CANCELLED", "COMPLETED", "CONFIGURING", "COMPLETING", "DEADLINE",
                "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PENDING", "PREEMPTED", "RUNNING",
                "RESV_DEL_HOLD", "REQUEUE_FED", "REQUEUE_HOLD", "REQUEUED", "RESIZING",
                "REVOKED", "SIGNALING", "SPECIAL_EXIT", "STAGE_OUT", "STOPPED", "SUSPENDED",
                "TIMEOUT"]},
            "detail": {"type": "string"},
            "time": {"type": "string", "format": "date-time"},
        },
    },
    "StepAbortResponse": {
        "type": "object",
        "required": ["name", "message"],
        "properties": {"name": {"type": "string"}, "status": {"type": "string"},
                       "detail": {"type": "string"}, "message": {"type": "string"}},
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": _NAME}


def _query_uint(name: str, description: str, minimum: int) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": "integer", "minimum": minimum, "maximum": 2**32 - 1}}


_JOB_ID = _query_uint("job_id", "the Slurm job the burst-buffer plugin acts for (an addition "
                      "to the spec; the plugin's role must send it, an administrator may "
                      "leave it out)", 1)
_UID = _query_uint("uid", "the uid of that job's user (an addition to the spec; required "
                   "from the plugin's role)", 0)
# GET server/allocation: job_id and uid together or neither. OpenAPI 3.0 says so of one
# object parameter only: exploded in the form style, its properties are the query
# parameters ?job_id=N&uid=U.
_BINDER = {"name": "binder", "in": "query", "required": False, "style": "form",
           "explode": True,
           "description": "?job_id=N&uid=U, both or neither: the Slurm job the burst-buffer "
                          "plugin binds for and that job's uid (an addition to the spec; the "
                          "plugin's role must send them, an administrator may leave them out)",
           "schema": {"type": "object", "additionalProperties": False,
                      "properties": {
                          "job_id": {"type": "integer", "minimum": 1, "maximum": 2**32 - 1},
                          "uid": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}},
                      "anyOf": [{"required": ["job_id", "uid"]}, {"maxProperties": 0}]}}


def _paged(kind: str, what: str) -> dict[str, Any]:
    """The paging parameters of a list of ``kind`` (api/paging.py)."""
    return {"parameters": [
        {"name": "limit", "in": "query", "required": False,
         "description": f"at most this many {what} (an addition to the spec: without it, "
                        "every one); the next page's cursor is then in X-Next-Cursor",
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}},
        {"name": "after", "in": "query", "required": False,
         "description": "the X-Next-Cursor of the previous page, unchanged (opaque; an "
                        "addition to the spec): the page starts after its item, which may "
                        "be gone since",
         "schema": {"type": "string", "maxLength": 256, "pattern": CURSOR_PATTERNS[kind]}}],
        "headers": {
            NEXT_CURSOR: {"description": "the cursor of the next page (with limit, when more "
                                         "items follow)",
                          "schema": {"type": "string", "pattern": CURSOR_PATTERNS[kind]}},
            "Link": {"description": "<this request with after=the next cursor>; "
                                    'rel="next" (with limit, when more items follow)',
                     "schema": {"type": "string"}}}}


def _list(kind: str, what: str, ok: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """(the 200 answer of a paged list with its headers, its paging parameters)."""
    paged = _paged(kind, what)
    return {**ok, "headers": paged["headers"]}, paged["parameters"]


def _one_or_list(kind: str, noun: str, item: str) -> tuple[dict[str, Any], list[Any]]:
    """status/{ident}: one status by name, or the paged list of a user id's."""
    return _list(kind, f"{noun}s of the user",
                 _json({"oneOf": [_ref(item), {"type": "array", "items": _ref(item)}]},
                       f"one status ({noun} name) or a list (user id)"))


_COMMON = {"400": _error("malformed request (the field and the fix are named)"),
           "404": _error("unknown route")}


def _op(summary: str, ok: dict[str, Any], *rest: Any, **extra: Any) -> dict[str, Any]:
    """An operation: ``_op(summary, ok, errors)``, or ``_op(summary, ok, parameters, errors)``
    for a list (``_list``); ``extra=[...]`` adds parameters to a list's."""
    *paging, errors = rest
    parameters = [*(paging[0] if paging else []), *extra.pop("extra", [])]
    if parameters:
        extra["parameters"] = [*parameters, *extra.get("parameters", [])]
    responses = {"200": ok, **_COMMON, **{code: _error(text) for code, text in errors.items()}}
    return {"summary": summary, "responses": responses, **extra}


OPERATIONS: dict[str, dict[str, Any]] = {
    "/ephemeralservice/reserve": {
        "post": _op(
            "Reserve datanode resources for an ephemeral service (idempotent per name)",
            _json(_ref("ReserveResponse"), "reserved (FREE) or queued (QUEUED)"),
            {"413": "body over 1 MiB", "415": "the body is not JSON",
             "500": "reservation failed: can never fit, or the name is reserved with "
                    "another request"},
            requestBody={"required": True,
                         "content": {"application/json": {"schema": _ref("ReserveRequest")}}},
        )
    },
    "/server/allocation/{service_name}": {
        "parameters": [_path_param("service_name", "the reservation name")],
        "get": _op("Bind a reservation (FREE -> ALLOCATED) and list its resources",
                   _json(_ref("Allocation"), "the allocation (again, for the job that bound "
                         "it)"),
                   {"403": "job_id/uid may not bind it: another user's reservation, or not "
                           "the service job the orchestrator submitted (the rule is named)",
                    "409": "the reservation is still queued",
                    "500": "the reservation is missing",
                    "501": "the reservation is already ALLOCATED (by another job)"},
                   parameters=[_BINDER]),
        "delete": _op("Delete a reservation (its resources return to the pool)",
                      _json(_ref("Released"), "released"),
                      {"403": "job_id did not bind this reservation: nothing released",
                       "500": "the release failed", "502": "allocation not found"},
                      parameters=[_JOB_ID]),
    },
    "/server/jobservice": {
        "post": _op("Reserve a service for one Slurm job, for its user (the burst-buffer "
                    "plugin, #BB_LUA wfm_job; idempotent per job and short name)",
                    _json(_ref("JobServiceResponse"), "reserved (FREE) or queued (QUEUED), "
                          "named <user>_job<N>[_<name>]"),
                    {"403": "Slurm does not list job_id as a live job of uid's user carrying "
                            "#BB_LUA wfm_job (the rule is named)",
                     "500": "reservation failed: can never fit, or Slurm unreachable"},
                    parameters=[{**_JOB_ID, "required": True}, {**_UID, "required": True}],
                    requestBody={"required": True, "content": {"application/json": {
                        "schema": _ref("JobServiceRequest")}}}),
        "delete": _op("Stop and release every job-scoped service of one Slurm job (its "
                      "burst-buffer teardown; nothing left is success)",
                      _json(_ref("JobServicesReleased"), "released (maybe none)"),
                      {"500": "request failed"},
                      parameters=[{**_JOB_ID, "required": True}]),
    },
    "/server/resources/all": {
        "get": _op("Resources of every datanode, in inventory order",
                   *_list("d", "datanodes",
                          _json({"type": "array", "items": _ref("ServerResourcesEntry")},
                                "all")),
                   {"500": "request failed"}),
    },
    "/server/resources/{server_name}": {
        "parameters": [_path_param("server_name", "a datanode name")],
        "get": _op("Resources of one datanode", _json(_ref("ServerResources"), "resources"),
                   {"500": "unknown datanode"}),
    },
    "/location/list": {
        "get": _op("Configured MSA locations",
                   *_list("l", "locations",
                          _json({"type": "array", "items": _ref("Location")}, "locations")),
                   {}),
    },
    "/ephemeralservice/flavors": {
        "get": _op("Configured flavors",
                   *_list("f", "flavors",
                          _json({"type": "array", "items": _ref("Flavor")}, "flavors")),
                   {}),
    },
    "/ephemeralservice/status": {
        "get": _op("Status of every ephemeral service, oldest first",
                   *_list("r", "services",
                          _json({"type": "array", "items": _ref("ServiceStatus")},
                                "statuses")),
                   {}, extra=[_query_uint("uid", "only the services of this uid's user "
                                          "(an addition to the spec: the burst-buffer "
                                          "plugin's scontrol show bbstat where Slurm says "
                                          "who asks; optional)", 0)]),
    },
    "/ephemeralservice/release/{service_name}": {
        "parameters": [_path_param("service_name", "the service name")],
        "delete": _op("Stop a service (stage-out first where its type stages data); its "
                      "resources return to the pool at teardown",
                      _json(_ref("ReleaseResponse"), "release accepted"),
                      {"403": "with uid: no such service of that uid's user (a job may stop "
                              "only its own user's services; field uid)",
                       "500": "not found or already released, or no Slurm configured"},
                      parameters=[_query_uint("job_id", "the Slurm job (destroy_persistent) "
                                              "the burst-buffer plugin stops it for (an "
                                              "addition to the spec; required from the "
                                              "plugin's role)", 1),
                                  _query_uint("uid", "that job's uid: only a service of this "
                                              "uid's user is stopped (an addition; required "
                                              "from the plugin's role)", 0)]),
    },
    "/ephemeralservice/status/{ident}": {
        "parameters": [_path_param("ident", "a service name (looked up first) or a user id "
                                   "([] for a name that is neither)")],
        "get": _op("Status of one service, or of every service of a user (oldest first)",
                   *_one_or_list("r", "service", "ServiceStatus"),
                   {"500": "with uid: no such service of that uid's user (a job may use "
                           "only its own user's services)"},
                   extra=[_query_uint("uid", "the uid of the step job the burst-buffer "
                                           "plugin checks for (an addition to the spec): the "
                                           "segment is then a service name, answered only "
                                           "if it is that user's; required from the "
                                           "plugin's role", 0),
                               _query_uint("job_id", "with uid: the job that uses, creates or "
                                           "destroys the service; it claims it "
                                           "(unclaimed_timeout). An addition to the spec; "
                                           "optional", 1)]),
    },
    "/step/launch": {
        "post": _op(
            "Launch a step: 200 once recorded; services are awaited, data movers and the "
            "step's job submitted asynchronously (follow step/status)",
            _json(_ref("StepLaunchResponse"), "launch accepted"),
            {"413": "body over 1 MiB", "415": "the body is not JSON",
             "500": "the name is taken by another step, or no Slurm configured"},
            requestBody={"required": True,
                         "content": {"application/json": {"schema": _ref("StepLaunchRequest")}}},
        )
    },
    "/step/progress": {
        "post": _op(
            "Record a data mover's progress (shown in the step's detail)",
            _json(_ref("StepProgressResponse"), "progress recorded"),
            {"403": "step_secret missing or not the step's own (field step_secret)",
             "413": "body over 1 MiB", "415": "the body is not JSON",
             "500": "unknown step or data mover, or no Slurm configured"},
            requestBody={"required": True,
                         "content": {"application/json": {"schema": _ref("StepProgressRequest")}}},
        )
    },
    "/step/status": {
        "get": _op("Status of every step, oldest first (ended ones until step_retention)",
                   *_list("s", "steps",
                          _json({"type": "array", "items": _ref("StepStatus")}, "statuses")),
                   {}),
    },
    "/step/status/{ident}": {
        "parameters": [_path_param("ident", "a step name (looked up first) or a user id ([] "
                                   "for a name that is neither, or a forgotten step)")],
        "get": _op("Status of one step, or of every step of a user (oldest first)",
                   *_one_or_list("s", "step", "StepStatus"),
                   {}),
    },
    "/step/abort/{step_id}": {
        "parameters": [_path_param("step_id", "the step name")],
        "delete": _op("Abort a step: cancel every job of it (data movers included); "
                      "idempotent",
                      _json(_ref("StepAbortResponse"), "abort accepted"),
                      {"500": "no such step, or no Slurm configured"}),
    },
}


_COUNT = {"type": "integer", "minimum": 0}
_STATUS_ITEM = {"type": "object", "required": ["user", "name", "status", "detail", "time"],
                "properties": {k: {"type": "string"}
                               for k in ("user", "name", "status", "detail", "time")}}
SCHEMAS["Overview"] = {
    "type": "object",
    "description": "What the dashboard (GET /ui) shows; sizes in MB, waits in seconds",
    "required": ["time", "slurm", "datanodes", "reservations", "queue", "services", "steps"],
    "properties": {
        "time": {"type": "string"},
        "slurm": {"type": "object", "required": ["configured", "problem"],
                  "properties": {"configured": {"type": "boolean"},
                                 "problem": {"type": "string"}}},
        "datanodes": {"type": "array", "items": {
            "type": "object",
            "required": ["name", "location", "state", "reason", "cores", "free_cores", "msize",
                         "free_msize", "ssize", "free_ssize"],
            "properties": {
                "name": {"type": "string"}, "location": {"type": "string"},
                "state": {"type": "string", "enum": ["up", "drained", "down"]},
                "reason": {"type": "string"},
                **{k: _COUNT for k in ("cores", "free_cores", "msize", "free_msize", "ssize",
                                       "free_ssize")}}}},
        "reservations": {"type": "object", "additionalProperties": _COUNT,
                         "description": "reservations by state (QUEUED, FREE, ...)"},
        "queue": {"type": "object", "required": ["length", "oldest_wait", "items"],
                  "properties": {
                      "length": _COUNT, "oldest_wait": {"type": "number", "minimum": 0},
                      "items": {"type": "array", "items": {
                          "type": "object",
                          "required": ["name", "user", "position", "servers", "cores",
                                       "msize", "ssize", "locations", "waiting"],
                          "properties": {
                              "name": {"type": "string"}, "user": {"type": "string"},
                              "position": _COUNT, "servers": _COUNT, "cores": _COUNT,
                              "msize": _COUNT, "ssize": _COUNT,
                              "locations": {"type": "array", "items": {"type": "string"}},
                              "waiting": {"type": "number", "minimum": 0}}}}}},
        "services": {"type": "object", "required": ["count", "items"],
                     "properties": {"count": _COUNT,
                                    "items": {"type": "array", "items": _STATUS_ITEM}}},
        "steps": {"type": "object", "required": ["count", "items"],
                  "properties": {"count": _COUNT,
                                 "items": {"type": "array", "items": _STATUS_ITEM}}},
    },
}


def _text(content_type: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {content_type: {"schema": {"type": "string"}}}}


# The operators' paths: outside the specification, not under a version prefix.
OPERATOR_OPERATIONS: dict[str, dict[str, Any]] = {
    "/metrics": {"get": {
        "summary": "Prometheus metrics (text format; names and labels in docs/operations.md)",
        "responses": {"200": _text("text/plain", "the metrics")}}},
    "/ui": {"get": {
        "summary": "The live dashboard (a page; it reads /ui/overview)",
        "responses": {"200": _text("text/html", "the page")}}},
    "/ui/dashboard.js": {"get": {
        "summary": "The dashboard's script", "responses": {"200": _text("text/javascript",
                                                                        "the script")}}},
    "/ui/dashboard.css": {"get": {
        "summary": "The dashboard's style", "responses": {"200": _text("text/css",
                                                                       "the style")}}},
    "/v1.0.0/leader": {"get": {
        "summary": "Who leads (public): role leader or standby, the leader's URL (as "
                   "advertised) and the lease's epoch (null without a lease: SQLite). A "
                   "standby answers every other request 503 with the leader's URL in the "
                   "X-WFM-Leader header and the body's leader (docs/ha.md)",
        "responses": {"200": _json(_ref("Role"), "the role")}}},
    "/ui/overview": {"get": {
        "summary": "What the dashboard shows: datanodes with their state and use, "
                   "reservations by state, the queue, live services, steps",
        "responses": {"200": _json(_ref("Overview"), "the overview")}}},
}
_DATANODE = {"type": "object",
             "required": ["name", "location", "state", "reason", "cores", "free_cores",
                          "msize", "free_msize", "ssize", "free_ssize"],
             "properties": {
                 "name": {"type": "string"}, "location": {"type": "string"},
                 "state": {"type": "string", "enum": ["up", "drained", "down"]},
                 "reason": {"type": "string"},
                 **{k: _COUNT for k in ("cores", "free_cores", "msize", "free_msize", "ssize",
                                        "free_ssize")}}}
SCHEMAS["Datanode"] = _DATANODE
SCHEMAS["Role"] = {
    "type": "object", "required": ["role", "leader", "epoch"],
    "properties": {"role": {"type": "string", "enum": ["leader", "standby"]},
                   "leader": {"type": "string", "nullable": True,
                              "description": "the leader's advertise_url; null when none "
                                             "leads"},
                   "epoch": {"type": "integer", "nullable": True}}}
SCHEMAS["AdminReservation"] = {
    "type": "object",
    "description": "A reservation as the Resource Manager holds it (sizes in MB per server)",
    "required": ["name", "user", "type", "state", "servers", "cores", "msize", "ssize",
                 "locations", "flavor", "position", "detail", "datanodes", "bound_job",
                 "created", "updated"],
    "properties": {
        **{k: {"type": "string"} for k in ("name", "user", "type", "flavor", "detail",
                                           "created", "updated")},
        "state": {"type": "string", "enum": ["QUEUED", "FREE", "ALLOCATED", "RELEASED"]},
        **{k: _COUNT for k in ("servers", "cores", "msize", "ssize", "position")},
        "locations": {"type": "array", "items": {"type": "string"}},
        "datanodes": {"type": "array", "items": {"type": "string"}},
        "bound_job": {"type": "integer", "nullable": True}}}
_DN_PARAM = [_path_param("name", "a datanode of wfm.conf")]
_ADMIN_ERRORS = {"400": _error("malformed request (the field and the fix are named)"),
                 "404": _error("no such datanode or reservation")}
_DN_OK, _DN_PAGING = _list("d", "datanodes",
                           _json({"type": "array", "items": _ref("Datanode")}, "datanodes"))
_RES_OK, _RES_PAGING = _list("r", "reservations",
                             _json({"type": "array", "items": _ref("AdminReservation")},
                                   "reservations"))
OPERATOR_OPERATIONS.update({
    "/admin/datanodes": {"get": {
        "summary": "Every datanode: capacity, free, state, in inventory order (admin)",
        "parameters": _DN_PAGING,
        "responses": {"200": _DN_OK, "400": _ADMIN_ERRORS["400"]}}},
    "/admin/datanodes/{name}/drain": {"parameters": _DN_PARAM, "post": {
        "summary": "Drain a datanode: no new placement there, existing reservations stay; "
                   "draining again replaces the reason (admin)",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["reason"],
            "properties": {"reason": {**constraints.text(MAX_REASON, blank=False),
                                      "description": "why (not blank)"}}}}}},
        "responses": {"200": _json(_ref("Datanode"), "the datanode, drained"),
                      **_ADMIN_ERRORS}}},
    "/admin/datanodes/{name}/resume": {"parameters": _DN_PARAM, "post": {
        "summary": "Resume a datanode: it takes placements again, the queue is admitted "
                   "(admin; idempotent)",
        "responses": {"200": _json(_ref("Datanode"), "the datanode, up"), **_ADMIN_ERRORS}}},
    "/admin/reservations": {"get": {
        "summary": "Reservations in arrival order: live ones, or those of one state (admin)",
        "parameters": [
            {"name": "user", "in": "query", "required": False,
             "schema": constraints.USER_NAME, "description": "only this user's"},
            {"name": "state", "in": "query", "required": False,
             "schema": {"type": "string", "enum": [s.value for s in ReservationState]},
             "description": "only those in this state (RELEASED ones until forgotten)"},
            *_RES_PAGING],
        "responses": {"200": _RES_OK, **_ADMIN_ERRORS}}},
    "/admin/reload": {"post": {
        "summary": "Read wfm.conf again: records and the reloadable settings take effect; "
                   "a file with errors, or one that would not hold the reservations, is "
                   "refused and the running configuration kept (admin)",
        "responses": {
            "200": _json({"type": "object",
                          "required": ["file", "changes", "restart_needed",
                                       "drained_until_released"],
                          "properties": {
                              "file": {"type": "string"},
                              "changes": {"type": "array", "items": {"type": "string"}},
                              "restart_needed": {"type": "array",
                                                 "items": {"type": "string"}},
                              "drained_until_released": {"type": "array",
                                                         "items": {"type": "string"}}}},
                         "what changed"),
            "400": _error("the file has errors (each with file:line): nothing changed"),
            "404": _error("unknown route"),
            "409": _error("held reservations would not fit: nothing changed")}}},
    "/admin/reservations/{name}": {
        "parameters": [_path_param("name", "a reservation name")],
        "get": {"summary": "One reservation (admin)",
                "responses": {"200": _json(_ref("AdminReservation"), "the reservation"),
                              **_ADMIN_ERRORS}}},
})
_PUBLIC_PATHS = ("/ui", "/ui/dashboard.js", "/ui/dashboard.css", "/v1.0.0/leader")


# With auth = keycloak every operation takes a bearer token (docs/security.md).
BEARER_SCHEME = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                 "description": "An access token of the Keycloak realm (keycloak_realm), "
                                "for the audience keycloak_audience"}
_BEARER_ERRORS = {
    "401": _error("no bearer token, or one that is invalid or expired (see WWW-Authenticate)"),
    "403": _error("the token's roles do not allow this operation (the role needed is named)"),
    "503": _error("the realm's signing keys could not be fetched from Keycloak yet"),
}


def _with_bearer_errors(responses: dict[str, Any]) -> dict[str, Any]:
    """An operation's responses plus the bearer ones; a code both define names both causes."""
    out = dict(responses)
    for code, answer in _BEARER_ERRORS.items():
        if code in out:
            answer = _error(f"{answer['description']}; or {out[code]['description']}")
        out[code] = answer
    return out


def document(paths: list[str], bearer: bool = False,
             config: Config | None = None) -> dict[str, Any]:
    """The OpenAPI document of ``paths``; ``bearer`` when the API asks for tokens;
    ``config``: what the request bodies may name (flavors, locations, tiers, ...)."""
    out_paths = {}
    for path in paths:
        version = CANONICAL_VERSION.get(path, DEFAULT_VERSION)
        operations = OPERATIONS[path]
        if bearer:
            operations = {
                method: ({**op, "responses": _with_bearer_errors(op["responses"])}
                         if method != "parameters" else op)
                for method, op in operations.items()}
        out_paths[f"/{version}{path}"] = operations
    for path, operations in OPERATOR_OPERATIONS.items():
        if bearer and path not in _PUBLIC_PATHS:
            operations = {method: ({**op, "responses": _with_bearer_errors(op["responses"])}
                                   if method != "parameters" else op)
                          for method, op in operations.items()}
        elif bearer:
            operations = {method: {**op, "security": []} for method, op in operations.items()}
        out_paths[path] = operations
    components: dict[str, Any] = {"schemas": {
        **SCHEMAS, "ReserveRequest": constraints.reserve_request(config),
        "JobServiceRequest": constraints.job_service_request(config),
        "StepLaunchRequest": constraints.step_launch_request(config)}}
    security: dict[str, Any] = {}
    if bearer:
        components["securitySchemes"] = {"bearerAuth": BEARER_SCHEME}
        security["security"] = [{"bearerAuth": []}]
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "WFM Orchestrator API",
            "version": "1.0.0",
            "description": (
                "The IO-SEA Orchestrator API. Paths are listed under the specification's "
                "version prefix; every path is also served, identically, under /v1.0.0, "
                "/v2.0.0 and /v2.1.0 (aliases for the IO-SEA Session Manager and Resource "
                "Manager). Every error body carries title, description and message. Every "
                "list takes limit and after (paging: docs/api.md); the next page's cursor "
                "is in X-Next-Cursor."
            ),
        },
        "paths": out_paths,
        "components": components,
        **security,
    }


def _configured(config: Config) -> tuple[Any, ...]:
    """What of ``config`` the document names: it is made again when a reload changes it."""
    return (tuple(config.flavors), tuple(config.locations), config.target_tier_list,
            config.datamover_operation_list, config.slurm_user,
            tuple(config.service_types), config.impersonate_users)


class OpenAPI:
    auth_actions = {"GET": "public"}

    def __init__(self, paths: list[str], bearer: bool = False, config: Config | None = None):
        self.paths = paths
        self.bearer = bearer
        self.config = config
        self._made: tuple[Any, dict[str, Any]] | None = None

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        key = _configured(self.config) if self.config is not None else None
        if self._made is None or self._made[0] != key:
            self._made = (key, document(self.paths, self.bearer, self.config))
        resp.media = self._made[1]
