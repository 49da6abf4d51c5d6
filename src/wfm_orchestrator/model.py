"""Names, statuses and request records: the vocabulary shared by every layer.

Pure: validation here raises InvalidRequest naming the field and what would
be valid; nothing here knows about HTTP, SQLite or Slurm.
"""

from __future__ import annotations

import enum
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from .config import SERVICE_TYPES, USER_RULE, Config, is_user_name
from .errors import InvalidRequest, SizeError
from .size import bytes_to_mb_up, parse_size

# Names are opaque to the orchestrator (the Session Manager builds them as
# <user>_<session>_<service>, the public one with hyphens). They end up in
# Slurm job names, #BB_LUA directives and file names, hence the strict set.
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
NAME_RULE = "1 to 128 letters, digits, '_', '-' or '.', not starting with '-' or '.', no '..'"
# Sizes are MB; 2**53 MB is far beyond any machine and keeps every value an exact
# JSON number, an int64 in SQLite and in the compiled allocator.
MAX_MB = 1 << 53
MAX_SERVERS = 4096
MAX_CORES = 1024
MAX_TOKEN = 16384
# A service for the length of one job (#18) is named after it: <user>_job<id>[_<short>].
# The form is the job's alone: an ordinary reserve may not take such a name first.
SHORT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,31}$")  # a letter first: WFM_JOB_<SHORT>_*
SHORT_RULE = "1 to 32 letters, digits or '-', starting with a letter"
JOB_SCOPED_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}_job[0-9]{1,10}"
                           r"(?:_[A-Za-z0-9][A-Za-z0-9-]{0,31})?$")


class ReservationState(enum.StrEnum):
    """Resource Manager state of a reservation (DESIGN.md §4)."""

    QUEUED = "QUEUED"  # valid, waiting for room
    FREE = "FREE"  # resources held, service not started
    ALLOCATED = "ALLOCATED"  # GET server/allocation done (the service is bound)
    RELEASED = "RELEASED"  # DELETE server/allocation or release: resources returned


class DatanodeState(enum.StrEnum):
    """Whether a datanode takes new placements (``server/resources``, metrics, dashboard).

    ``ResourceManager.datanode_state`` is the one place every reader asks: drain and
    resume set DRAINED; Slurm's node states (read every ``node_poll_interval``) set
    DOWN. A node both drained and down in Slurm is DRAINED, its reason naming both.
    """

    UP = "up"  # takes new placements
    DRAINED = "drained"  # taken out by an administrator: existing services stay
    DOWN = "down"  # Slurm keeps it from new jobs: DOWN, DRAIN, FAIL, NOT_RESPONDING, ...


@dataclass(frozen=True)
class NodeReport:
    """What Slurm says of a datanode it keeps from new jobs (docs/operations.md).

    ``text`` is Slurm's state and reason (``IDLE+DRAIN (disk swap)``, ``DOWN+NOT_RESPONDING
    (Not responding)``); ``down``: the jobs running there are lost or stalled, so the
    services there say so in their status (a drain leaves them running).
    """

    text: str
    down: bool = False


def down_note(servers: Iterable[str], down: Mapping[str, str], verb: str = "is") -> str:
    """``datanode dn2 is down in Slurm: DOWN (fan)`` for each of ``servers`` in ``down``
    (name -> Slurm's words), joined by "; "; "" when none is. A service's status says it."""
    return "; ".join(f"datanode {s} {verb} down in Slurm: {down[s]}"
                     for s in dict.fromkeys(servers) if s in down)


class StepPhase(enum.StrEnum):
    """Where the orchestrator is with a step (stored as these strings in ``step.phase``)."""

    WAITING = "WAITING"  # accepted, waiting for its services, then submitting its jobs
    SUBMITTED = "SUBMITTED"  # every job submitted: Slurm runs them
    FAILED = "FAILED"  # failed by the orchestrator: its jobs are cancelled
    DONE = "DONE"  # every job ended (or was aborted): nothing left to follow


class ServiceStatus(enum.StrEnum):
    """The specification's ephemeral service statuses."""

    STAGINGIN = "STAGINGIN"
    STAGEDIN = "STAGEDIN"
    ALLOCATED = "ALLOCATED"
    STAGINGOUT = "STAGINGOUT"
    STAGEDOUT = "STAGEDOUT"
    STOPPED = "STOPPED"
    TEARDOWN = "TEARDOWN"


def check_name(value: Any, field: str = "name") -> str:
    if not isinstance(value, str):
        raise InvalidRequest(field, f"expected a string ({NAME_RULE})")
    # fullmatch: '$' would let a trailing newline through.
    if not NAME_RE.fullmatch(value) or ".." in value:
        raise InvalidRequest(field, f"invalid name {_shown(value)}: expected {NAME_RULE}")
    return value


def check_user(value: Any, field: str = "user") -> str:
    if not isinstance(value, str):
        raise InvalidRequest(field, f"expected a string ({USER_RULE})")
    if not is_user_name(value):
        raise InvalidRequest(field, f"invalid user {_shown(value)}: expected {USER_RULE}")
    return value


def _shown(value: str) -> str:
    return repr(value if len(value) <= 64 else value[:64] + "...")


def _int(value: Any, field: str, lo: int, hi: int) -> int:
    # bool is an int in Python; JSON true is not a size.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(field, f"expected an integer from {lo} to {hi}, got {_kind(value)}")
    if not lo <= value <= hi:
        raise InvalidRequest(field, f"{value} is out of range: expected {lo} to {hi}")
    return value


def _kind(value: Any) -> str:
    return {str: "a string", float: "a number with a fraction", bool: "a boolean",
            list: "a list", dict: "an object", type(None): "null"}.get(type(value), "a value") \
        + (f" ({value!r})" if isinstance(value, (str, float, bool)) and len(repr(value)) < 40
           else "")


def _str(value: Any, field: str, max_len: int = 4096) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(field, f"expected a string, got {_kind(value)}")
    if len(value) > max_len:
        raise InvalidRequest(field, f"longer than {max_len} characters")
    if "\0" in value:
        raise InvalidRequest(field, "contains a NUL byte")
    return value


def _size_mb(value: Any, field: str) -> int:
    """A size in MB: a JSON integer (MB, as the spec says) or a string with a unit."""
    if isinstance(value, str):
        try:
            mb = bytes_to_mb_up(parse_size(value))
        except SizeError as e:
            raise InvalidRequest(field, str(e)) from None
        if mb > MAX_MB:
            raise InvalidRequest(field, f"{value!r} is larger than the largest size accepted")
        return mb
    return _int(value, field, 0, MAX_MB)


class ReserveRequest(NamedTuple):
    """A validated ``ephemeralservice/reserve`` body, expanded to per-server demand.

    One lives per reservation (100,000 and more), and a start makes them all again: a
    named tuple (immutable like a frozen dataclass, half its size, made in a fifth of the
    time), and the strings many requests repeat (user, type, flavor, locations, targets,
    mountpoint, token) are interned by ``parse_reserve`` and by the store's loader.
    """

    name: str
    user: str
    user_slurm_token: str
    type: str
    servers: int
    cores: int
    msize: int
    ssize: int
    locations: tuple[str, ...]
    flavor: str | None
    targets: tuple[str, ...]
    mountpoint: str | None
    job_id: int | None = None  # the Slurm job a job-scoped service (#18) lives for

    def canonical(self) -> dict[str, Any]:
        """What two requests must share to be "the same request" (the token may be renewed)."""
        out: dict[str, Any] = {
            "name": self.name, "user": self.user, "type": self.type, "servers": self.servers,
            "cores": self.cores, "msize": self.msize, "ssize": self.ssize,
            "locations": list(self.locations), "flavor": self.flavor,
            "targets": list(self.targets), "mountpoint": self.mountpoint,
        }
        if self.job_id is not None:
            # Only when set: the stored form of every other request stays as it was.
            out["job_id"] = self.job_id
        return out


_RESERVE_KEYS = {"name", "user", "user_slurm_token", "type", "servers", "attributes", "location"}
_ATTRIBUTE_KEYS = {"cores", "msize", "ssize", "gssize", "flavor", "targets", "mountpoint"}
# Types whose service is a distributed file system sized globally (spec table;
# DASI is the IO-SEA type the spec's list lacks, treated like GBF).
_GLOBAL_TYPES = ("NFS", "GBF", "DASI")


def job_service_name(user: str, job_id: int, short: str | None = None) -> str:
    """The name of job ``job_id``'s service (#18): ``<user>_job<id>[_<short>]``."""
    return f"{user}_job{job_id}" + (f"_{short}" if short else "")


def parse_reserve(body: Any, config: Config, *, job_id: int | None = None) -> ReserveRequest:
    """Validate a reserve body against the spec's attribute table.

    ``job_id``: the request is job ``job_id``'s own (#18), under its derived name; without
    it, a name of that form is refused.
    """
    if not isinstance(body, Mapping):
        raise InvalidRequest("body", f"expected a JSON object, got {_kind(body)}")
    if not _RESERVE_KEYS.issuperset(body):
        unknown = sorted(set(body) - _RESERVE_KEYS)
        valid = ", ".join(sorted(_RESERVE_KEYS))
        raise InvalidRequest(unknown[0], f"unknown field (valid: {valid})")
    for key in ("name", "user", "user_slurm_token", "type", "attributes"):
        if key not in body:
            raise InvalidRequest(key, "required field is missing")
    name = check_name(body["name"])
    if job_id is None and JOB_SCOPED_RE.match(name):
        raise InvalidRequest("name", f"{_shown(name)} has the form <user>_job<N>[_<short>] of "
                             "a job-scoped service (#BB_LUA wfm_job), which only that job "
                             "may reserve: choose another name")
    user = check_user(body["user"])
    token = _str(body["user_slurm_token"], "user_slurm_token", MAX_TOKEN)
    stype = body["type"]
    if stype not in SERVICE_TYPES:
        raise InvalidRequest("type", f"unknown type {stype!r} (valid: {', '.join(SERVICE_TYPES)})")
    servers = _int(body.get("servers", 1), "servers", 1, MAX_SERVERS)
    locations = parse_locations(body.get("location"), config)

    attrs = body["attributes"]
    if not isinstance(attrs, Mapping):
        raise InvalidRequest("attributes", f"expected a JSON object, got {_kind(attrs)}")
    if not _ATTRIBUTE_KEYS.issuperset(attrs):
        unknown = sorted(set(attrs) - _ATTRIBUTE_KEYS)
        raise InvalidRequest(f"attributes.{unknown[0]}",
                             f"unknown attribute (valid: {', '.join(sorted(_ATTRIBUTE_KEYS))})")

    if "flavor" in attrs:
        clash = sorted({"cores", "msize", "ssize", "gssize"} & set(attrs))
        if clash:
            raise InvalidRequest(f"attributes.{clash[0]}",
                                 "exclusive with attributes.flavor (a flavor defines cores, "
                                 "msize and ssize)")
    if "ssize" in attrs and "gssize" in attrs:
        raise InvalidRequest("attributes.ssize", "exclusive with attributes.gssize")
    if stype in _GLOBAL_TYPES:
        for key in ("gssize", "mountpoint"):
            if key not in attrs:
                raise InvalidRequest(f"attributes.{key}", f"required for type {stype}")
    if stype == "SBB":
        for key in ("flavor", "targets"):
            if key not in attrs:
                raise InvalidRequest(f"attributes.{key}", "required for type SBB")

    flavor = None
    if "flavor" in attrs:
        fname = _str(attrs["flavor"], "attributes.flavor", 128)
        if fname not in config.flavors:
            valid = ", ".join(config.flavors) or "none configured"
            raise InvalidRequest("attributes.flavor", f"unknown flavor {fname!r} (valid: {valid})")
        fl = config.flavors[fname]
        flavor, cores, msize, ssize = fname, fl.cores, fl.msize, fl.ssize
    else:
        cores = _int(attrs.get("cores", 1), "attributes.cores", 0, MAX_CORES)
        msize = _size_mb(attrs.get("msize", 0), "attributes.msize")
        if "gssize" in attrs:
            gssize = _size_mb(attrs["gssize"], "attributes.gssize")
            ssize = -(-gssize // servers)
        else:
            ssize = _size_mb(attrs.get("ssize", 0), "attributes.ssize")

    targets: tuple[str, ...] = ()
    if "targets" in attrs:
        raw = attrs["targets"]
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not items:
            raise InvalidRequest("attributes.targets",
                                 "expected a file pattern or a non-empty list of patterns")
        targets = tuple(_str(t, f"attributes.targets[{i}]") for i, t in enumerate(items))
        if any(not t.strip() for t in targets):
            raise InvalidRequest("attributes.targets", "empty file pattern")
    mountpoint = None
    if "mountpoint" in attrs:
        mountpoint = _str(attrs["mountpoint"], "attributes.mountpoint")
        if not mountpoint.startswith("/") or "\n" in mountpoint or "\r" in mountpoint:
            raise InvalidRequest("attributes.mountpoint", "expected an absolute path")

    intern = sys.intern
    return ReserveRequest(name, intern(user), intern(token), intern(stype), servers, cores,
                          msize, ssize, locations, flavor and intern(flavor),
                          tuple(map(intern, targets)), mountpoint and intern(mountpoint),
                          job_id)


def parse_locations(value: Any, config: Config, field: str = "location") -> tuple[str, ...]:
    """A list of configured location names; ``None`` or ``[]`` mean no constraint."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidRequest(field, f"expected a list of location names, got {_kind(value)}")
    out: list[str] = []
    for i, item in enumerate(value):
        loc = _str(item, f"{field}[{i}]", 128).strip()
        if loc not in config.locations:
            valid = ", ".join(config.locations) or "none configured"
            raise InvalidRequest(f"{field}[{i}]", f"unknown location {loc!r} (valid: {valid})")
        if loc not in out:
            out.append(sys.intern(loc))
    return tuple(out)
