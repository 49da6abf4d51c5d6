"""wfm.conf parser: file text -> immutable Config.

Two line forms, as in the specification:

* settings ``key = value`` (lower-case keys, see ``SETTINGS``);
* Slurm-style records ``Kind=name Key=Value ...`` (``Location``, ``Flavor``,
  ``Datanode``, ``EphemeralService``, ``Tier``, ``Limit``, ``Account``); values may be
  quoted.

``#`` starts a comment. Every problem is collected with ``file:line`` and the
offending text, and all of them are raised together as one ConfigError, so
an administrator fixes a file in one pass. Pure: the only I/O is reading
the file in ``load_config``.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from ClusterShell.NodeSet import NodeSet, NodeSetException
from ClusterShell.RangeSet import RangeSet, RangeSetException

from . import state_db
from .errors import ConfigError, ConfigProblem, SizeError
from .size import bytes_to_mb_down, bytes_to_mb_up, format_mb, parse_size

SERVICE_TYPES = ("NFS", "GBF", "SBB", "DASI")
# Core ids are kept in fixed-size bitsets by the compiled allocator.
MAX_CORE_ID = 1023
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# The user of a reservation or a step, and the users of Limit and Account records.
USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
USER_RULE = ("a POSIX user name: 1 to 32 letters, digits, '_', '-' or '.', "
             "starting with a letter or '_'")
# Limit=account:<name> bounds a Slurm account; user names cannot hold the ':'.
ACCOUNT_PREFIX = "account:"


def is_user_name(value: str) -> bool:
    """Could ``value`` be a user name (model.check_user accepts it)? Matched whole: '$'
    alone lets a trailing newline through."""
    return bool(USER_RE.fullmatch(value)) and ".." not in value


# --- records ----------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    name: str
    compute_nodes: tuple[str, ...]
    datanodes: tuple[str, ...]
    neighbours: tuple[str, ...]


@dataclass(frozen=True)
class Flavor:
    name: str
    cores: int
    msize: int  # MB
    ssize: int  # MB


@dataclass(frozen=True)
class DatanodeSpec:
    name: str
    core_list: tuple[int, ...]
    msize: int  # MB
    ssize: int  # MB
    location: str | None


@dataclass(frozen=True)
class ServiceType:
    """How to launch an ephemeral service of one type (``EphemeralService=``)."""

    name: str
    command: tuple[str, ...]


@dataclass(frozen=True)
class Limit:
    """The most one user (``Limit=default``, ``Limit=<user>``) or one Slurm account's
    members together (``Limit=account:<name>``) may hold at once, summed over the
    reservations holding resources: None where the record sets no bound."""

    name: str
    cores: int | None = None
    msize: int | None = None  # MB
    ssize: int | None = None  # MB
    services: int | None = None

    def over(self, other: Limit) -> Limit:
        """This record's bounds, the other's where this one sets none (an override)."""
        return Limit(self.name, *(getattr(self, k) if getattr(self, k) is not None
                                  else getattr(other, k)
                                  for k in ("cores", "msize", "ssize", "services")))


@dataclass(frozen=True)
class SlurmAccount:
    """The users whose default Slurm account is ``name`` (``Account=<name> Users=...``),
    as the site's Slurm associations say: what ``Limit=account:<name>`` bounds."""

    name: str
    users: tuple[str, ...]


@dataclass(frozen=True)
class Tier:
    """A storage tier a data mover may read or write (``Tier=NVMe Root=/path``)."""

    name: str
    root: str


# --- settings ---------------------------------------------------------------


# A released service's job is followed for 10 minutes after it ended
# (services.FOLLOW_RELEASED); forgetting it must come well after that.
MIN_RETENTION = 3600.0


def _text(v: str) -> str:
    return v


def _listen(v: str) -> str:
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected host:port, e.g. 127.0.0.1:8080")
    return v


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(v: str) -> str:
        if v not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return v

    return parse


def _csv(v: str) -> tuple[str, ...]:
    items = tuple(x.strip() for x in v.split(",") if x.strip())
    if not items:
        raise ValueError("expected a comma-separated list")
    return items


def _number_of_seconds(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        raise ValueError("expected a number of seconds") from None


def _seconds(v: str) -> float:
    f = _number_of_seconds(v)
    if not 0 < f <= 86400:
        raise ValueError("expected a number of seconds between 0 and 86400")
    return f


def _seconds_or_off(v: str) -> float:
    f = _number_of_seconds(v)
    if not 0 <= f <= 86400:
        raise ValueError("expected 0 (off) or a number of seconds up to 86400")
    return f


def _seconds_between(v: str, lo: float, hi: float) -> float:
    f = _number_of_seconds(v)
    if not lo <= f <= hi:
        raise ValueError(f"expected a number of seconds from {lo:g} to {hi:g}")
    return f


def _unclaimed(v: str) -> float:
    f = _number_of_seconds(v)
    if f != 0 and not 10 <= f <= 30 * 86400:
        raise ValueError("expected 0 (never) or a number of seconds from 10 to 2592000 (30 days)")
    return f


def _retention(v: str) -> float:
    f = _number_of_seconds(v)
    if not MIN_RETENTION <= f <= 10 * 365 * 86400:
        raise ValueError(f"expected a number of seconds from {MIN_RETENTION:.0f} (1 hour) "
                         "to 315360000 (10 years)")
    return f


def _cpus(v: str) -> str:
    if v in ("auto", "all"):
        return v
    try:
        RangeSet(v)
    except RangeSetException:
        raise ValueError("expected auto, all, or a CPU list such as 0 or 0-1") from None
    return v


def _url(v: str) -> str:
    if v and not re.match(r"^https?://[^\s/]+(/\S*)?$", v):
        raise ValueError("expected an http:// or https:// URL, or nothing")
    return v.rstrip("/")


@dataclass(frozen=True)
class Setting:
    default: str
    parse: Callable[[str], Any]
    doc: str
    path: bool = False  # resolved relative to the configuration file


SETTINGS: dict[str, Setting] = {
    "listen": Setting("127.0.0.1:8080", _listen, "address:port the REST API listens on"),
    "state_db": Setting(
        "/var/lib/wfm-orchestrator/state.db", state_db.parse,
        "state database: a path or sqlite:PATH (SQLite), or postgresql://host[,host2]/db",
        path=True,
    ),
    "lease_ttl": Setting(
        "6", lambda v: _seconds_between(v, 3, 300),
        "PostgreSQL state_db: seconds the leader lease lasts unless renewed (renewed every "
        "third of it); a standby takes over once it expired (docs/ha.md)"),
    "advertise_url": Setting(
        "", _url, "PostgreSQL state_db: the URL clients reach this orchestrator at, given "
        "to them by the standbys' 503 answers; empty: http://HOST:PORT of listen"),
    "cpus": Setting(
        "auto",
        _cpus,
        "CPUs the server runs on: auto = one CPU (waitress collapses when its threads "
        "spread over several cores), all = no pinning, or a CPU list",
    ),
    "threads": Setting("8", lambda v: _int_range(v, 1, 256), "waitress worker threads"),
    "fast_path": Setting(
        "on", _choice("on", "off"),
        "on = non-blocking endpoints served on the server's event loop; off = stock waitress",
    ),
    "slurmrestd_url": Setting(
        "", _url, "slurmrestd base URL; empty = pure Resource Manager (no Slurm)"
    ),
    "slurmrestd_insecure": Setting(
        "no", _choice("no", "yes"), "yes = accept an http:// slurmrestd_url on a host that is "
        "not loopback, though the SlurmUser token then crosses the network in clear"
    ),
    "slurm_api_version": Setting(
        "auto", _choice("auto", "v0.0.42", "v0.0.41", "v0.0.40", "v0.0.38"),
        "slurmrestd OpenAPI version: auto = the newest both sides know, chosen at start-up "
        "(v0.0.38 = Slurm 22.05; v0.0.40 to v0.0.42 = Slurm 24.11)"),
    "slurm_token_file": Setting(
        "", _text, "file holding the SlurmUser JWT (scontrol token)", path=True
    ),
    "slurm_user": Setting("slurm", _text, "user name the slurm_token_file token belongs to"),
    "plugin_limits_file": Setting(
        "", _text, "file the orchestrator writes at start-up and reload for the burst-buffer "
        "plugin (types, flavors, locations, datanodes: what a #BB_LUA wfm_job can ever ask); "
        "empty = not written", path=True),
    "impersonate_users": Setting(
        "no", lambda v: _choice("yes", "no")(v) == "yes",
        "yes = submit a user's job with the SlurmUser token when the user's own token is "
        "missing, a placeholder or refused (each use logged); no = such a submission fails"),
    "min_user_uid": Setting(
        "1000", lambda v: _int_range(v, 1, 2**32 - 2),
        "smallest uid of an account that may own a reservation or a step (root, the "
        "SlurmUser and system accounts are refused)"),
    "slurm_timeout": Setting("10", _seconds, "timeout of every slurmrestd call, seconds"),
    "datanode_partition": Setting("data", _text, "Slurm partition of the datanodes"),
    "compute_partition": Setting("compute", _text, "Slurm partition of the compute nodes"),
    "auth": Setting(
        "keycloak", _choice("keycloak", "none"), "keycloak (bearer tokens) or none (loopback only)"
    ),
    "keycloak_server": Setting("", _text, "Keycloak host, IP address or base URL"),
    "keycloak_realm": Setting("", _text, "Keycloak realm issuing the tokens"),
    "keycloak_audience": Setting("wfm-orchestrator", _text, "required token audience (aud)"),
    "role_session_manager": Setting(
        "session-manager", _text, "token role of the Session Manager (acts for any user)"),
    "role_burst_buffer": Setting(
        "burst-buffer", _text, "token role of the burst-buffer plugin (server/allocation)"),
    "role_datamover": Setting("datamover", _text, "token role of data movers (step/progress)"),
    "role_metrics": Setting("metrics", _text, "token role of Prometheus scrapers (GET /metrics)"),
    "role_admin": Setting("admin", _text, "token role of administrators (everything)"),
    "placement_policy": Setting(
        "pack", _choice("pack", "spread"), "pack = best fit (default), spread = least loaded"
    ),
    "queue_policy": Setting(
        "fifo", _choice("fifo", "backfill"), "order in which queued reservations are admitted"
    ),
    "limit_policy": Setting(
        "queue", _choice("queue", "refuse"),
        "a reservation over its user's or its account's Limit: waits in the queue, "
        "or is refused"
    ),
    "backfill_window": Setting(
        "300", _seconds, "backfill: a later reservation may pass the head only while "
        "the head has waited less than this many seconds"
    ),
    "reconcile_interval": Setting("2", _seconds, "seconds between two polls of slurmrestd"),
    "node_poll_interval": Setting(
        "10", _seconds_or_off, "seconds between two reads of Slurm's node states (GET /nodes, "
        "on the follower's cycles): a datanode Slurm keeps from new jobs (DOWN, DRAIN, FAIL, "
        "NOT_RESPONDING) gets no new placement; 0: not followed"),
    "released_retention": Setting(
        "604800", _retention, "seconds a released reservation stays listed (STOPPED) before "
        "it is forgotten: removed from memory, the status lists and the state database"
    ),
    "step_retention": Setting(
        "604800", _retention, "seconds an ended step stays listed before it is forgotten with "
        "its data movers: removed from memory, the step lists and the state database"
    ),
    "teardown_grace": Setting(
        "60", _seconds, "seconds the burst-buffer teardown has, after a service job ended, to "
        "delete its reservation before the orchestrator frees it itself"
    ),
    "unclaimed_timeout": Setting(
        "3600", _unclaimed, "seconds a reservation may hold its resources without any claim "
        "by its user (a create_persistent, use_persistent or wfm_use job, its own "
        "wfm_service job, step/launch naming it, GET server/allocation) before it is "
        "released; 0: never"
    ),
    "release_timeout": Setting(
        "120", _seconds, "seconds after a released service's cancel before it is sent again if "
        "the job has not ended (the stage-out grace between SIGTERM and SIGKILL is Slurm's "
        "KillWait)"
    ),
    "stuck_job_timeout": Setting(
        # The bounds of unclaimed_timeout: 0 (never), or 10 s to 30 days.
        "600", _unclaimed, "seconds a service job may stay PENDING after the "
        "burst-buffer plugin bound its reservation before the orchestrator cancels it and "
        "submits a new one, keeping the reservation (a slurmctld restart can lose the job's "
        "burst-buffer state and leave it pending for ever); 0: never"
    ),
    "service_output": Setting(
        "/tmp/wfm-%x-%j.out",  # noqa: S108 - a path on the datanode, written by the user's job
        _text,
        "standard output of service jobs, on the datanode (Slurm's %x = job name, %j = job id)",
    ),
    "s3_server": Setting("", _text, "S3 long-term storage server (for the Session Manager)"),
    "target_tier_list": Setting("NVMe, SSD, HDD, tape", _csv, "storage tier names"),
    "datamover_operation_list": Setting("copy, move, release", _csv, "data mover operations"),
    "datamover_token_file": Setting(
        "", _text, "path, on the nodes, of a token with the datamover role that data movers "
        "send with their progress (auth = keycloak); empty: no token"
    ),
    "datamover_command": Setting(
        "wfm-datamover", _text, "command run by a data mover job (see docs/datamovers.md)"
    ),
}


def _int_range(v: str, lo: int, hi: int) -> int:
    if not re.fullmatch(r"\d+", v) or not lo <= int(v) <= hi:
        raise ValueError(f"expected an integer from {lo} to {hi}")
    return int(v)


@dataclass(frozen=True)
class Config:
    path: str
    settings: MappingProxyType
    locations: MappingProxyType  # name -> Location
    flavors: MappingProxyType  # name -> Flavor
    datanodes: MappingProxyType  # name -> DatanodeSpec, in file order
    service_types: MappingProxyType  # type -> ServiceType
    tiers: MappingProxyType  # name -> Tier
    limits: MappingProxyType = field(  # "default", a user or "account:<name>" -> Limit
        default_factory=lambda: MappingProxyType({}))
    slurm_accounts: MappingProxyType = field(  # name -> SlurmAccount, in file order
        default_factory=lambda: MappingProxyType({}))
    account_of_user: MappingProxyType = field(  # user -> its account's name (the reverse)
        default_factory=lambda: MappingProxyType({}))
    _extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __getattr__(self, name: str) -> Any:
        # Settings read as attributes (config.listen) without a second table to keep in step.
        try:
            return self.settings[name]
        except KeyError:
            raise AttributeError(name) from None

    def limit_for(self, user: str) -> Limit | None:
        """The bounds of ``user``: its record over the default one; None when neither."""
        own, default = self.limits.get(user), self.limits.get("default")
        if own is None:
            return default
        return own.over(default) if default is not None else own

    def account_limit_for(self, user: str) -> tuple[str, Limit | None]:
        """``user``'s Slurm account ('' when no Account record lists the user) and the
        bounds of that account (None when it has no Limit record)."""
        account = self.account_of_user.get(user, "")
        return account, self.limits.get(ACCOUNT_PREFIX + account) if account else None

    def neighbours_map(self) -> dict[str, list[str]]:
        return {name: list(loc.neighbours) for name, loc in self.locations.items()}


# --- parsing ----------------------------------------------------------------


class _Collector:
    def __init__(self, file: str):
        self.file = file
        self.problems: list[ConfigProblem] = []

    def add(self, line: int, text: str, message: str) -> None:
        # A state_db URL's password stays out of every message (and of the line quoted).
        self.problems.append(ConfigProblem(self.file, line, state_db.redact(text),
                                           state_db.redact(message)))


def _strip_comment(line: str) -> str:
    # '#' starts a comment at line start or after whitespace; inside a quoted
    # Command it is kept by shlex for records, so only settings use this.
    m = re.search(r"(^|\s)#", line)
    return line[: m.start()] if m else line


_RECORD_FIELDS = {
    "Location": {"ComputeNodes", "Datanodes", "NeighborLocation"},
    "Flavor": {"MemorySize", "Cores", "StorageSize"},
    "Datanode": {"Cores", "CoreList", "MemorySize", "StorageSize"},
    "EphemeralService": {"Command"},
    "Tier": {"Root"},
    "Limit": {"Cores", "MemorySize", "StorageSize", "Services"},
    "Account": {"Users"},
}


def parse_config(text: str, file: str = "wfm.conf") -> Config:
    """Parse the text of a wfm.conf; raise ConfigError listing every problem."""
    out = _Collector(file)
    raw_settings: dict[str, tuple[int, str, str]] = {}
    records: list[tuple[int, str, str, str, dict[str, str]]] = []

    for lineno, line in enumerate(text.splitlines(), start=1):
        if "\0" in line:
            out.add(lineno, line.replace("\0", "\\0"), "NUL byte in the file")
            continue
        body = _strip_comment(line).strip()
        if not body:
            continue
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=", body)
        if not m:
            out.add(lineno, line, "expected 'key = value' or a record such as 'Flavor=small ...'")
            continue
        key = m.group(1)
        if key in _RECORD_FIELDS:
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError as e:
                out.add(lineno, line, f"cannot split the record: {e}")
                continue
            fields: dict[str, str] = {}
            bad = False
            for tok in tokens:
                k, sep, v = tok.partition("=")
                if not sep:
                    out.add(lineno, line, f"expected Key=Value, got {tok!r}")
                    bad = True
                    continue
                if k in fields:
                    out.add(lineno, line, f"{k} given twice")
                    bad = True
                fields[k] = v
            if bad:
                continue
            name = fields.pop(key)
            unknown = sorted(set(fields) - _RECORD_FIELDS[key])
            if unknown:
                valid = ", ".join(sorted(_RECORD_FIELDS[key]))
                out.add(lineno, line, f"unknown key {unknown[0]} in {key} record (valid: {valid})")
                continue
            records.append((lineno, line, key, name, fields))
        elif key in SETTINGS:
            value = body[m.end() :].strip()
            if key in raw_settings:
                out.add(lineno, line, f"{key} set twice (first at line {raw_settings[key][0]})")
                continue
            raw_settings[key] = (lineno, line, value)
        else:
            out.add(
                lineno,
                line,
                f"unknown key {key!r} (settings: {', '.join(sorted(SETTINGS))}; "
                f"records: {', '.join(_RECORD_FIELDS)})",
            )

    base = os.path.dirname(os.path.abspath(file))
    settings: dict[str, Any] = {}
    for key, spec in SETTINGS.items():
        lineno, line, value = raw_settings.get(key, (0, "", spec.default))
        try:
            parsed = spec.parse(value)
        except ValueError as e:
            out.add(lineno, line, f"{key}: invalid value {value!r}: {e}")
            continue
        if spec.path and parsed and not state_db.is_postgresql(parsed):
            parsed = os.path.normpath(os.path.join(base, parsed))
        settings[key] = parsed

    locations, flavors, datanodes, services, tiers, limits = _build_records(records, settings,
                                                                            out)
    accounts, account_of_user = _build_accounts(records, limits, out)
    _check_settings(settings, raw_settings, out)
    if out.problems:
        raise ConfigError(sorted(out.problems, key=lambda p: p.line))
    return Config(
        path=file,
        settings=MappingProxyType(settings),
        locations=MappingProxyType(locations),
        flavors=MappingProxyType(flavors),
        datanodes=MappingProxyType(datanodes),
        service_types=MappingProxyType(services),
        tiers=MappingProxyType(tiers),
        limits=MappingProxyType(limits),
        slurm_accounts=MappingProxyType(accounts),
        account_of_user=MappingProxyType(account_of_user),
    )


@functools.lru_cache(maxsize=256)
def _nodes(value: str) -> tuple[str, ...]:
    # Cached: a Location's Datanodes= and its Datanode= record most often name the same
    # range, and a start expands each once (10,000 names: ~10 ms each).
    return tuple(NodeSet(value)) if value else ()


def _size_mb(value: str, up: bool) -> int:
    nbytes = parse_size(value)
    return bytes_to_mb_up(nbytes) if up else bytes_to_mb_down(nbytes)


def _build_records(records, settings, out: _Collector):  # noqa: C901 - one pass, one branch per kind
    locations: dict[str, Location] = {}
    flavors: dict[str, Flavor] = {}
    inventory: dict[str, tuple[int, str, tuple[int, ...], int, int]] = {}
    services: dict[str, ServiceType] = {}
    tiers: dict[str, Tier] = {}
    limits: dict[str, Limit] = {}
    location_lines: dict[str, tuple[int, str]] = {}

    for lineno, line, kind, name, f in records:
        try:
            if kind == "Location":
                _check_name(name, "Location")
                if name in locations:
                    raise ValueError(f"duplicate Location {name!r}")
                loc = Location(
                    name=name,
                    compute_nodes=_nodes(f.get("ComputeNodes", "")),
                    datanodes=_nodes(f.get("Datanodes", "")),
                    neighbours=tuple(x.strip() for x in f.get("NeighborLocation", "").split(",")
                                     if x.strip()),
                )
                locations[name] = loc
                location_lines[name] = (lineno, line)
            elif kind == "Flavor":
                _check_name(name, "Flavor")
                if name in flavors:
                    raise ValueError(f"duplicate Flavor {name!r}")
                for req in ("Cores", "MemorySize"):
                    if req not in f:
                        raise ValueError(f"Flavor {name!r} needs {req}=")
                cores = _int_field(f, "Cores")
                msize = _size_mb(f["MemorySize"], up=True)
                ssize = _size_mb(f.get("StorageSize", "0"), up=True)
                if cores <= 0 or msize <= 0:
                    raise ValueError(f"Flavor {name!r} needs Cores > 0 and MemorySize > 0")
                flavors[name] = Flavor(name, cores, msize, ssize)
            elif kind == "Datanode":
                if ("Cores" in f) == ("CoreList" in f):
                    raise ValueError("a Datanode record needs exactly one of Cores= or CoreList=")
                for req in ("MemorySize", "StorageSize"):
                    if req not in f:
                        raise ValueError(f"Datanode record needs {req}=")
                if "Cores" in f:
                    n = _int_field(f, "Cores")
                    if not 1 <= n <= MAX_CORE_ID + 1:
                        raise ValueError(f"Cores={n}: expected 1 to {MAX_CORE_ID + 1}")
                    core_list = tuple(range(n))
                else:
                    core_list = tuple(int(c) for c in RangeSet(f["CoreList"]))
                    if not core_list or max(core_list) > MAX_CORE_ID:
                        raise ValueError(f"CoreList: expected core ids from 0 to {MAX_CORE_ID}")
                msize = _size_mb(f["MemorySize"], up=False)
                ssize = _size_mb(f["StorageSize"], up=False)
                if msize <= 0:
                    raise ValueError("MemorySize must be at least 1MB")
                for node in _nodes(name):
                    _check_name(node, "Datanode")
                    if node in inventory:
                        raise ValueError(f"datanode {node} described twice "
                                         f"(first at line {inventory[node][0]})")
                    inventory[node] = (lineno, line, core_list, msize, ssize)
            elif kind == "EphemeralService":
                if name not in SERVICE_TYPES:
                    raise ValueError(f"unknown service type {name!r} "
                                     f"(valid: {', '.join(SERVICE_TYPES)})")
                if name in services:
                    raise ValueError(f"EphemeralService {name} configured twice")
                if not f.get("Command"):
                    raise ValueError("EphemeralService needs Command=\"program args...\"")
                services[name] = ServiceType(name, tuple(shlex.split(f["Command"])))
            elif kind == "Tier":
                if name in tiers:
                    raise ValueError(f"Tier {name} configured twice")
                root = f.get("Root", "")
                if not os.path.isabs(root):
                    raise ValueError("Tier needs Root=<absolute path>")
                tiers[name] = Tier(name, os.path.normpath(root))
            elif kind == "Limit":
                if name.startswith(ACCOUNT_PREFIX):
                    _check_name(name.removeprefix(ACCOUNT_PREFIX), "Limit=account:")
                elif not is_user_name(name):
                    raise ValueError(f"Limit {name!r}: expected default, a user name "
                                     f"({USER_RULE}) or account:<Slurm account>")
                if name in limits:
                    raise ValueError(f"Limit {name} configured twice")
                if not f:
                    raise ValueError("a Limit needs one of Cores=, MemorySize=, StorageSize=, "
                                     "Services=")
                limits[name] = Limit(
                    name,
                    cores=_int_field(f, "Cores") if "Cores" in f else None,
                    msize=_size_mb(f["MemorySize"], up=False) if "MemorySize" in f else None,
                    ssize=_size_mb(f["StorageSize"], up=False) if "StorageSize" in f else None,
                    services=_int_field(f, "Services") if "Services" in f else None)
        except (ValueError, SizeError, NodeSetException, RangeSetException) as e:
            out.add(lineno, line, str(e))

    owner: dict[str, str] = {}
    for name, loc in locations.items():
        lineno, line = location_lines[name]
        for nb in loc.neighbours:
            if nb not in locations:
                out.add(lineno, line, f"NeighborLocation {nb!r} is not a configured Location")
            elif nb == name:
                out.add(lineno, line, f"Location {name!r} names itself as a neighbour")
        for dn in loc.datanodes:
            if dn not in inventory:
                out.add(lineno, line, f"datanode {dn} has no inventory (add a Datanode={dn} "
                                      "record with Cores, MemorySize and StorageSize)")
            if dn in owner:
                out.add(lineno, line, f"datanode {dn} is in two locations "
                                      f"({owner[dn]} and {name})")
            else:
                owner[dn] = name

    for tier in tiers:
        if "target_tier_list" in settings and tier not in settings["target_tier_list"]:
            lineno, line = next((r[0], r[1]) for r in records if r[2] == "Tier" and r[3] == tier)
            out.add(lineno, line, f"Tier {tier} is not in target_tier_list")

    datanodes = {
        name: DatanodeSpec(name, core_list, msize, ssize, owner.get(name))
        for name, (_, _, core_list, msize, ssize) in inventory.items()
    }
    return locations, flavors, datanodes, services, tiers, limits


def _build_accounts(records, limits: dict[str, Limit], out: _Collector
                    ) -> tuple[dict[str, SlurmAccount], dict[str, str]]:
    """The Account records and their reverse index (user -> account). A user is in one
    record at most: the records mirror each user's default account. Each
    ``Limit=account:<name>`` needs the Account record saying who its members are."""
    accounts: dict[str, SlurmAccount] = {}
    first_line: dict[str, int] = {}
    account_of_user: dict[str, str] = {}
    refused: set[str] = set()  # an invalid record: its Limit is not blamed a second time
    for lineno, line, kind, name, f in records:
        if kind != "Account":
            continue
        try:
            _check_name(name, "Account")
            if name in accounts:
                raise ValueError(f"Account {name} configured twice "
                                 f"(first at line {first_line[name]})")
            users = tuple(u.strip() for u in f.get("Users", "").split(",") if u.strip())
            if not users:
                raise ValueError(f"Account {name} needs Users=<user>,<user>,... (the users "
                                 "whose default Slurm account it is)")
            for user in users:
                if not is_user_name(user):
                    raise ValueError(f"Account {name}: user {user!r} is invalid: expected "
                                     f"{USER_RULE}")
                if users.count(user) > 1:
                    raise ValueError(f"Account {name}: user {user} listed twice")
                other = account_of_user.get(user)
                if other is not None:
                    raise ValueError(
                        f"user {user} is in Account {other} (line {first_line[other]}) and in "
                        f"Account {name}: list each user under one account, its default "
                        "Slurm account (sacctmgr show user format=defaultaccount,user)")
        except ValueError as e:
            out.add(lineno, line, str(e))
            refused.add(name)
            continue
        accounts[name] = SlurmAccount(name, users)
        first_line[name] = lineno
        account_of_user.update(dict.fromkeys(users, name))
    for lineno, line, kind, name, _ in records:
        account = name.removeprefix(ACCOUNT_PREFIX)
        if (kind == "Limit" and name.startswith(ACCOUNT_PREFIX) and name in limits
                and account not in accounts and account not in refused):
            out.add(lineno, line, f"Limit={name}: no Account={account} record says who its "
                                  f"members are (add 'Account={account} Users=<user>,...', "
                                  "generated as docs/configuration.md shows)")
    return accounts, account_of_user


def _int_field(f: dict[str, str], key: str) -> int:
    v = f[key]
    if not re.fullmatch(r"\d{1,9}", v):
        raise ValueError(f"{key}={v!r}: expected a whole number")
    return int(v)


def _check_name(name: str, kind: str) -> None:
    if not _NAME_RE.match(name):
        raise ValueError(f"{kind} name {name!r} is invalid: letters, digits, '_', '-', '.'")


def _check_settings(settings, raw, out: _Collector) -> None:
    if settings.get("slurmrestd_url") and not settings.get("slurm_token_file"):
        lineno, line, _ = raw.get("slurmrestd_url", (0, "", ""))
        out.add(lineno, line, "slurmrestd_url needs slurm_token_file (a SlurmUser token, "
                              "from 'scontrol token username=slurm'), to follow every job")
    url = settings.get("slurmrestd_url", "")
    if (url.startswith("http://") and settings.get("slurmrestd_insecure") != "yes"
            and not _is_loopback(_url_host(url))):
        lineno, line, _ = raw.get("slurmrestd_url", (0, "", ""))
        out.add(lineno, line, f"slurmrestd_url {url} would send the SlurmUser token, in every "
                              "request, in clear to a host that is not loopback: use https://, "
                              "or slurmrestd_insecure = yes to accept it knowingly")
    if settings.get("auth") == "none" and "listen" in settings:
        host = settings["listen"].rpartition(":")[0].strip("[]")
        if not _is_loopback(host):
            lineno, line, _ = raw.get("auth", (0, "", ""))
            out.add(lineno, line, f"auth = none is allowed only on a loopback listener, "
                                  f"not {settings['listen']} (use auth = keycloak)")
    if settings.get("auth") == "keycloak":
        for key in ("keycloak_server", "keycloak_realm"):
            if not settings.get(key):
                lineno, line, _ = raw.get("auth", (0, "", ""))
                out.add(lineno, line, f"auth = keycloak needs {key} "
                                      "(or auth = none on a loopback listener)")


def _url_host(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:  # "http://[::1" and the like: no host we could call loopback
        return ""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_config(path: str) -> Config:
    """Read and parse a wfm.conf file."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([ConfigProblem(path, 0, "", f"cannot read the file: {e}")]) from e
    return parse_config(text, path)


def describe(config: Config) -> str:
    """The readable summary printed by ``wfm-orchestrator check-config``."""
    lines = [f"{config.path}: OK"]
    lines.append(f"Locations ({len(config.locations)}):")
    for loc in config.locations.values():
        lines.append(f"  {loc.name}: compute {NodeSet.fromlist(loc.compute_nodes) or '-'}, "
                     f"datanodes {NodeSet.fromlist(loc.datanodes) or '-'}, "
                     f"neighbours {', '.join(loc.neighbours) or '-'}")
    lines.append(f"Datanodes ({len(config.datanodes)}):")
    for dn in config.datanodes.values():
        cores = str(RangeSet(",".join(map(str, dn.core_list))))
        lines.append(f"  {dn.name}: {len(dn.core_list)} cores [{cores}], "
                     f"memory {dn.msize} MB ({format_mb(dn.msize)}), "
                     f"storage {dn.ssize} MB ({format_mb(dn.ssize)}), "
                     f"location {dn.location or '-'}")
    lines.append(f"Flavors ({len(config.flavors)}):")
    for fl in config.flavors.values():
        lines.append(f"  {fl.name}: {fl.cores} cores, msize {fl.msize} MB, ssize {fl.ssize} MB")
    if config.service_types:
        lines.append("Ephemeral services:")
        for st in config.service_types.values():
            lines.append(f"  {st.name}: {shlex.join(st.command)}")
    if config.tiers:
        lines.append("Tiers:")
        for t in config.tiers.values():
            lines.append(f"  {t.name}: {t.root}")
    if config.slurm_accounts:
        lines.append(f"Slurm accounts ({len(config.slurm_accounts)}):")
        for acct in config.slurm_accounts.values():
            lines.append(f"  {acct.name}: {', '.join(acct.users)}")
    if config.limits:
        lines.append(f"Limits ({config.limit_policy} when over):")
        for lim in config.limits.values():
            bounds = [f"{label} {value if unit is None else format_mb(value)}"
                      for label, value, unit in (("cores", lim.cores, None),
                                                 ("memory", lim.msize, "MB"),
                                                 ("storage", lim.ssize, "MB"),
                                                 ("services", lim.services, None))
                      if value is not None]
            lines.append(f"  {lim.name}: {', '.join(bounds)}")
    lines.append("Settings:")
    for key, value in config.settings.items():
        shown = ", ".join(value) if isinstance(value, tuple) else value
        lines.append(f"  {key} = {shown}")
    return "\n".join(lines)


# --- reload (SIGHUP, wfm-orchestrator reload) ---------------------------------

# Settings a reload changes: they are read at each decision. The others shaped the
# listener, the store, the identity provider or the Slurm client at start: a reload keeps
# their running values and says that a restart applies them. Every record (Location,
# Flavor, Datanode, EphemeralService, Tier, Limit, Account) is reloaded.
RELOADABLE = frozenset({"placement_policy", "queue_policy", "limit_policy", "backfill_window",
                        "released_retention", "teardown_grace", "unclaimed_timeout",
                        "release_timeout", "stuck_job_timeout", "step_retention"})


def reloaded(running: Config, new: Config) -> tuple[Config, list[str]]:
    """The configuration to run after a reload, and the settings that need a restart
    (changed in the file, kept at their running value)."""
    settings = dict(new.settings)
    restart = []
    for key, value in running.settings.items():
        if key not in RELOADABLE and settings.get(key) != value:
            restart.append(key)
            settings[key] = value
    return replace(new, settings=MappingProxyType(settings)), sorted(restart)


def changes(old: Config, new: Config) -> list[str]:
    """What a reload changes, one line each (for the log and the reload's answer)."""
    out = []
    for kind in ("locations", "flavors", "datanodes", "service_types", "tiers", "limits",
                 "slurm_accounts"):
        before, after = getattr(old, kind), getattr(new, kind)
        label = kind.rstrip("s").replace("_", " ")
        out += [f"{label} {n} added" for n in after if n not in before]
        out += [f"{label} {n} removed" for n in before if n not in after]
        out += [f"{label} {n} changed" for n in after if n in before and after[n] != before[n]]
    out += [state_db.redact(f"{k} = {new.settings[k]} (was {old.settings.get(k)})")
            for k in new.settings if new.settings[k] != old.settings.get(k)]
    return out


def adopt(running: Config, new: Config) -> None:
    """Make ``running`` hold ``new``'s values, in place: every holder of the running
    configuration (the managers, the API's resources) sees the reload. The one change
    ever made to a Config; the resource manager does it under its lock."""
    for f in fields(Config):
        if f.name != "_extra":
            object.__setattr__(running, f.name, getattr(new, f.name))
