"""Workflow steps on Slurm: data movers, the step's job, status, progress, abort.

``POST step/launch`` is validated (:func:`parse_launch`), recorded durably
(table ``step``) and answered 200 once committed. One worker thread then
does all Slurm I/O, like the service worker: one ``GET /jobs`` per cycle.
For a step waiting for its services it checks each one through the service
manager (usable = ALLOCATED or STAGEDIN; unknown, another user's or stopped
= the step fails with that detail); once they are usable it submits, in
order, the ``step_start`` data movers, the step's job (``afterok`` on them,
``#BB_LUA wfm_use`` for each service) and the ``step_stop`` data movers
(``afterany`` on the step's job). Every job carries a tag (``comment``), so
after a restart a job submitted before the crash is adopted, not submitted
twice. A failed stage-in cancels the step's job (it never runs) and the
stage-out movers; ``step/abort`` cancels every job of the step.

The status (:func:`derive_status`, pure) is the Slurm state of the step's
job, PENDING before it is submitted, STAGE_OUT while stage-out movers run,
FAILED when the orchestrator or a data mover failed it, CANCELLED after an
abort. Records are kept after Slurm forgets the jobs.

Lock order: the service manager's locks are never taken while this
manager's lock is held.
"""

from __future__ import annotations

import logging
import posixpath
import pwd
import shlex
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import ujson

from .config import Config
from .errors import (
    InvalidRequest,
    NoSlurm,
    NotFound,
    RequestFailed,
    SlurmError,
    SlurmUnavailable,
    WfmError,
)
from .model import check_name, check_user, parse_locations
from .resource_manager import iso_time
from .sbatch import StepCommand, parse_command_env, translate
from .services import fault
from .slurm import Dependency, JobSpec, JobState, SlurmClient, use_directive
from .slurm.jobs import NAME_RE as JOB_NAME_RE
from .store import Store
from .worker import Worker

log = logging.getLogger(__name__)

TAG_PREFIX = "wfm-orchestrator:step:"
TRIGGERS = ("step_start", "step_stop")
HINTS = ("RO", "RW", "WO")
USABLE = ("ALLOCATED", "STAGEDIN")
NOT_USABLE = ("STOPPED", "STAGINGOUT", "STAGEDOUT", "TEARDOWN")
TERMINAL = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
                      "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT", "SPECIAL_EXIT", "REVOKED",
                      "GONE"})
MAX_ELEMENTS = 1024
MAX_PROGRESS = 1024
MOVER_MEMORY_MB = 256
CANCEL_REPEAT = 60.0


def job_tag(launch_id: str, key: str) -> str:
    """The comment that identifies one job of a step, also after a restart."""
    return f"{TAG_PREFIX}{launch_id}:{key}"


# --- the request -----------------------------------------------------------------


@dataclass(frozen=True)
class DataMover:
    name: str
    service: str
    trigger: str  # step_start | step_stop
    operation: str
    source: str  # tier the elements are read from
    target: str
    elements: tuple[str, ...]  # patterns relative to the source tier's root

    @property
    def key(self) -> str:
        return f"dm:{self.name}"

    @property
    def stage(self) -> str:
        return "stage-in" if self.trigger == "step_start" else "stage-out"


@dataclass(frozen=True)
class ServiceUse:
    name: str
    hint: str
    datamovers: tuple[DataMover, ...]


@dataclass(frozen=True)
class StepRequest:
    name: str
    user: str
    locations: tuple[str, ...]
    command: Any  # as given (a string, or a list of words)
    command_env: Mapping[str, str]
    services: tuple[ServiceUse, ...]
    home: str  # the user's home directory: default working directory of the job

    @property
    def movers(self) -> tuple[DataMover, ...]:
        return tuple(dm for s in self.services for dm in s.datamovers)

    def canonical(self) -> dict[str, Any]:
        return {
            "name": self.name, "user": self.user, "location": list(self.locations),
            "command": self.command, "command_env": dict(self.command_env), "home": self.home,
            "services": [{"name": s.name, "hint": s.hint, "datamovers": [
                {"name": d.name, "trigger": d.trigger, "operation": d.operation,
                 "source": d.source, "target": d.target, "elements": list(d.elements)}
                for d in s.datamovers]} for s in self.services],
        }

    @classmethod
    def from_canonical(cls, d: dict[str, Any]) -> StepRequest:
        return cls(d["name"], d["user"], tuple(d["location"]), d["command"],
                   dict(d["command_env"]),
                   tuple(ServiceUse(s["name"], s["hint"], tuple(
                       DataMover(m["name"], s["name"], m["trigger"], m["operation"],
                                 m["source"], m["target"], tuple(m["elements"]))
                       for m in s["datamovers"])) for s in d["services"]),
                   d["home"])


def home_of(user: str) -> str:
    """The user's home directory on this host, /tmp if unknown."""
    try:
        return pwd.getpwnam(user).pw_dir or "/tmp"  # noqa: S108 - a default working directory
    except KeyError:
        return "/tmp"  # noqa: S108


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(v), type(v).__name__)


def _enum(value: Any, field: str, valid: tuple[str, ...] | list[str]) -> str:
    if not isinstance(value, str) or value not in valid:
        raise InvalidRequest(field, f"{value!r} is invalid: expected one of {', '.join(valid)}")
    return value


def tier_order(config: Config) -> list[str]:
    """Configured tiers (with a Root), fastest first (target_tier_list order)."""
    return [t for t in config.target_tier_list if t in config.tiers]


def default_source(target: str, config: Config) -> str | None:
    """The source tier of a pattern given without ``TIER:``.

    Staging into the fastest configured tier reads from the slowest one (the
    data's home); any other target reads from the fastest one (the cache).
    """
    tiers = tier_order(config)
    if not tiers:
        return None
    return tiers[-1] if target == tiers[0] else tiers[0]


def parse_element(value: Any, field: str, target: str, config: Config) -> tuple[str, str]:
    """One element -> (source tier, pattern relative to its root)."""
    if not isinstance(value, str):
        raise InvalidRequest(field, f"expected a string, got {_kind(value)}")
    if not value or len(value) > 4096 or any(ord(c) < 32 or c == "\x7f" for c in value):
        raise InvalidRequest(field, "expected 1 to 4096 printable characters")
    source: str | None = None
    pattern = value
    head, sep, tail = value.partition(":")
    if sep and head in config.target_tier_list:
        source, pattern = head, tail
    if pattern.startswith("/"):
        # An absolute path: it must lie in a configured tier's root (textually).
        norm = posixpath.normpath(pattern)
        for tier in config.tiers.values():
            root = tier.root.rstrip("/") or "/"
            if norm == root or norm.startswith(root + "/"):
                if source is not None and source != tier.name:
                    raise InvalidRequest(field, f"{value!r}: the path is in tier {tier.name}, "
                                                f"not {source}")
                source, pattern = tier.name, norm[len(root):].lstrip("/")
                break
        else:
            raise InvalidRequest(field, f"{value!r} is outside every tier root (elements are "
                                        "patterns relative to a tier root: [TIER:]path/glob)")
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    if not parts:
        raise InvalidRequest(field, f"{value!r} names a whole tier root; name files or "
                                    "directories in it")
    if ".." in parts:
        raise InvalidRequest(field, f"{value!r}: '..' is not allowed")
    if source is None:
        source = default_source(target, config)
        if source is None:
            raise InvalidRequest(field, f"{value!r}: no Tier is configured; give the source "
                                        "tier as TIER:pattern")
    if source == target:
        raise InvalidRequest(field, f"{value!r}: the source tier is the target {target}")
    return source, "/".join(parts)


def parse_datamover(d: Any, field: str, service: str, config: Config) -> DataMover:
    if not isinstance(d, dict):
        raise InvalidRequest(field, f"expected an object, got {_kind(d)}")
    unknown = set(d) - {"name", "trigger", "target", "operation", "elements"}
    if unknown:
        raise InvalidRequest(f"{field}.{sorted(unknown)[0]}", "unknown field")
    for key in ("name", "trigger", "target", "operation", "elements"):
        if key not in d:
            raise InvalidRequest(f"{field}.{key}", "is required")
    name = check_name(d["name"], f"{field}.name")
    trigger = _enum(d["trigger"], f"{field}.trigger", TRIGGERS)
    target = _enum(d["target"], f"{field}.target", list(config.target_tier_list))
    operation = _enum(d["operation"], f"{field}.operation", list(config.datamover_operation_list))
    elements = d["elements"]
    if not isinstance(elements, list) or not elements:
        raise InvalidRequest(f"{field}.elements", "expected a non-empty list of strings")
    if len(elements) > MAX_ELEMENTS:
        raise InvalidRequest(f"{field}.elements", f"at most {MAX_ELEMENTS} elements")
    parsed = [parse_element(e, f"{field}.elements[{i}]", target, config)
              for i, e in enumerate(elements)]
    sources = {s for s, _ in parsed}
    if len(sources) > 1:
        raise InvalidRequest(f"{field}.elements", f"elements come from several tiers "
                                                  f"({', '.join(sorted(sources))}): one data "
                                                  "mover moves from one source tier")
    return DataMover(name, service, trigger, operation, parsed[0][0], target,
                     tuple(p for _, p in parsed))


def parse_launch(body: Any, config: Config,
                 home: Callable[[str], str] = home_of) -> tuple[StepRequest, StepCommand]:
    """Validate a step/launch body; raise InvalidRequest naming the field."""
    if not isinstance(body, dict):
        raise InvalidRequest("body", f"expected a JSON object, got {_kind(body)}")
    unknown = set(body) - {"name", "user", "location", "command_env", "command", "services"}
    if unknown:
        raise InvalidRequest(sorted(unknown)[0], "unknown field")
    for key in ("name", "user", "command"):
        if key not in body:
            raise InvalidRequest(key, "is required")
    name = check_name(body["name"], "name")
    user = check_user(body["user"], "user")
    locations = parse_locations(body.get("location"), config)
    env = parse_command_env(body.get("command_env"))
    services_in = body.get("services") or []
    if not isinstance(services_in, list):
        raise InvalidRequest("services", f"expected a list, got {_kind(services_in)}")
    services: list[ServiceUse] = []
    dm_names: set[str] = set()
    for i, s in enumerate(services_in):
        f = f"services[{i}]"
        if not isinstance(s, dict):
            raise InvalidRequest(f, f"expected an object, got {_kind(s)}")
        unknown = set(s) - {"name", "hint", "datamovers"}
        if unknown:
            raise InvalidRequest(f"{f}.{sorted(unknown)[0]}", "unknown field")
        if "name" not in s:
            raise InvalidRequest(f"{f}.name", "is required")
        sname = check_name(s["name"], f"{f}.name")
        if any(u.name == sname for u in services):
            raise InvalidRequest(f"{f}.name", f"service {sname} is named twice")
        hint = _enum(s.get("hint", "RW"), f"{f}.hint", HINTS)
        movers_in = s.get("datamovers") or []
        if not isinstance(movers_in, list):
            raise InvalidRequest(f"{f}.datamovers", f"expected a list, got {_kind(movers_in)}")
        movers = []
        for j, d in enumerate(movers_in):
            dm = parse_datamover(d, f"{f}.datamovers[{j}]", sname, config)
            if dm.name in dm_names:
                raise InvalidRequest(f"{f}.datamovers[{j}].name",
                                     f"data mover {dm.name} is named twice in the step")
            dm_names.add(dm.name)
            movers.append(dm)
        services.append(ServiceUse(sname, hint, tuple(movers)))
    command = body["command"]
    req = StepRequest(name, user, locations, command, env, tuple(services), home(user))
    cmd = translate(command, env, partition=config.compute_partition, home=req.home)
    return req, cmd


# --- job descriptions (pure) -----------------------------------------------------


def _job_name(text: str) -> str:
    text = text[:200]
    return text if JOB_NAME_RE.match(text) else ("s" + text)[:200]


def progress_url(config: Config) -> str:
    host, _, port = config.listen.rpartition(":")
    host = host.strip("[]")
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - read, not bound
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/v1.0.0/step/progress"


def location_exclude(config: Config, locations: tuple[str, ...]) -> list[str]:
    """Compute nodes outside the step's locations (sbatch -x)."""
    if not locations:
        return []
    every = {n for loc in config.locations.values() for n in loc.compute_nodes}
    allowed = {n for loc in locations for n in config.locations[loc].compute_nodes}
    return sorted(every - allowed)


def build_step_job(config: Config, req: StepRequest, cmd: StepCommand, launch_id: str,
                   after: tuple[int, ...]) -> JobSpec:
    cwd = cmd.cwd or req.home
    env = {"HOME": req.home, "USER": req.user, "LOGNAME": req.user}
    env.update(req.command_env)
    env["WFM_STEP_NAME"] = req.name
    return JobSpec(
        name=_job_name(req.name),
        command=cmd.argv,
        partition=config.compute_partition,
        node_count=cmd.nodes,
        memory_per_node=cmd.memory_per_node,
        environment=env,
        cwd=cwd,
        comment=job_tag(launch_id, "main"),
        dependencies=[Dependency("afterok", after)] if after else (),
        stdout=cmd.stdout or posixpath.join(cwd, "slurm-%j.out"),
        stderr=cmd.stderr,
        time_limit=cmd.time_limit,
        bb=[use_directive(s.name, s.hint) for s in req.services],
        tasks=cmd.tasks,
        tasks_per_node=cmd.tasks_per_node,
        cpus_per_task=cmd.cpus_per_task,
        memory_per_cpu=cmd.memory_per_cpu,
        exclusive=cmd.exclusive,
        account=cmd.account,
        qos=cmd.qos,
        exclude=location_exclude(config, req.locations),
    )


def build_mover_job(config: Config, req: StepRequest, dm: DataMover, launch_id: str,
                    after: tuple[int, ...]) -> JobSpec:
    """A data mover's job: ``datamover_command OP SOURCE TARGET -- PATTERN...`` as the user."""
    source = config.tiers.get(dm.source)
    target = config.tiers.get(dm.target)
    env = {
        "HOME": req.home, "USER": req.user, "LOGNAME": req.user,
        "WFM_STEP_NAME": req.name,
        "WFM_DATAMOVER_NAME": dm.name,
        "WFM_DATAMOVER_OPERATION": dm.operation,
        "WFM_DATAMOVER_TRIGGER": dm.trigger,
        "WFM_SERVICE_NAME": dm.service,
        "WFM_SOURCE_TIER": dm.source,
        "WFM_SOURCE_ROOT": source.root if source else "",
        "WFM_TARGET_TIER": dm.target,
        "WFM_TARGET_ROOT": target.root if target else "",
        "WFM_PROGRESS_URL": progress_url(config),
        "WFM_TOKEN_FILE": config.datamover_token_file,
    }
    argv = [*shlex.split(config.datamover_command), dm.operation, dm.source, dm.target, "--",
            *dm.elements]
    return JobSpec(
        name=_job_name(f"{req.name}.{dm.name}"),
        command=argv,
        partition=config.datanode_partition,
        node_count=1,
        cpus_per_node=1,
        memory_per_node=MOVER_MEMORY_MB,
        environment=env,
        cwd="/tmp",  # noqa: S108 - a job's working directory
        comment=job_tag(launch_id, dm.key),
        dependencies=[Dependency("afterany", after)] if after else (),
        stdout=config.service_output,
    )


# --- records ------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    name: str
    user: str
    request: StepRequest
    launch_id: str
    phase: str = "WAITING"  # WAITING | SUBMITTED | FAILED | DONE
    detail: str = ""
    abort_requested: float | None = None
    created: float = 0.0
    updated: float = 0.0


@dataclass(frozen=True)
class StepJob:
    step: str
    key: str
    job_id: int | None = None
    state: str = ""
    reason: str = ""
    nodes: str = ""
    exit_code: int | None = None
    progress: str = ""
    progress_time: float | None = None
    updated: float = 0.0

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL


_STEP_UPSERT = (
    "INSERT INTO step (name, user, request, launch_id, phase, detail, abort_requested, created,"
    " updated) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET phase=excluded.phase,"
    " detail=excluded.detail, abort_requested=excluded.abort_requested, updated=excluded.updated"
)
_JOB_UPSERT = (
    "INSERT INTO step_job (step, key, job_id, state, reason, nodes, exit_code, progress,"
    " progress_time, updated) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(step, key) DO UPDATE SET"
    " job_id=excluded.job_id, state=excluded.state, reason=excluded.reason,"
    " nodes=excluded.nodes, exit_code=excluded.exit_code, progress=excluded.progress,"
    " progress_time=excluded.progress_time, updated=excluded.updated"
)


def _step_row(s: Step) -> tuple[str, tuple[Any, ...]]:
    return (_STEP_UPSERT, (s.name, s.user, ujson.dumps(s.request.canonical(), sort_keys=True),
                           s.launch_id, s.phase, s.detail, s.abort_requested, s.created,
                           s.updated))


def _job_row(j: StepJob) -> tuple[str, tuple[Any, ...]]:
    return (_JOB_UPSERT, (j.step, j.key, j.job_id, j.state, j.reason, j.nodes, j.exit_code,
                          j.progress, j.progress_time, j.updated))


# --- the status (pure) ---------------------------------------------------------------


def _exit(job: StepJob) -> str:
    if not job.exit_code:
        return ""
    code = job.exit_code >> 8 if job.exit_code > 255 else job.exit_code
    return f", exit status {code}"


def _mover_text(dm: DataMover, job: StepJob | None) -> str:
    if job is None or job.job_id is None:
        return f"{dm.stage} mover {dm.name} not submitted"
    prog = f": {job.progress}" if job.progress else ""
    if job.ended:
        if job.state == "COMPLETED":
            return f"{dm.stage} mover {dm.name} done{prog}"
        why = f" ({job.reason})" if job.reason else ""
        return (f"{dm.stage} mover {dm.name} failed: Slurm job {job.job_id} {job.state}{why}"
                f"{_exit(job)}{prog}")
    if job.state == "RUNNING":
        return f"{dm.stage} mover {dm.name} running{prog or ' (no progress posted yet)'}"
    why = f" ({job.reason})" if job.reason else ""
    return f"{dm.stage} mover {dm.name} {(job.state or 'submitted').lower()}{why}"


def derive_status(step: Step, jobs: Mapping[str, StepJob], waiting: str = ""
                  ) -> tuple[str, str, float]:
    """(status, detail, time of the last change) of a step, from its records only."""
    req = step.request
    times = [step.updated] + [j.updated for j in jobs.values()] + \
            [j.progress_time for j in jobs.values() if j.progress_time]
    when = max(times)
    main = jobs.get("main")
    start = [dm for dm in req.movers if dm.trigger == "step_start"]
    stop = [dm for dm in req.movers if dm.trigger == "step_stop"]
    active = [j for j in jobs.values() if j.job_id is not None and not j.ended]
    failed_start = [dm for dm in start if (j := jobs.get(dm.key)) and j.ended
                    and j.state != "COMPLETED"]
    failed_stop = [dm for dm in stop if (j := jobs.get(dm.key)) and j.ended
                   and j.state != "COMPLETED"]

    if step.abort_requested is not None:
        done_before = (main is not None and main.ended and main.state != "CANCELLED"
                       and main.updated <= step.abort_requested)
        if active:
            ids = ", ".join(str(j.job_id) for j in active)
            state = main.state if main is not None and main.state and not main.ended \
                else "PENDING"
            return state, f"abort requested: cancelling Slurm job(s) {ids}", when
        if done_before and main is not None:
            return main.state, (f"Slurm job {main.job_id} had ended {main.state} before the "
                                "abort request"), when
        return "CANCELLED", "aborted by request" + (
            f"; Slurm job {main.job_id} {main.state}" if main and main.job_id else
            " before the step's job was submitted"), when
    if step.phase == "FAILED":
        detail = step.detail
        if active:
            detail += f" (cancelling Slurm job(s) {', '.join(str(j.job_id) for j in active)})"
        return "FAILED", detail, when
    if failed_start:
        dm = failed_start[0]
        extra = ""
        if main is not None and main.job_id is not None:
            extra = (f"; step job {main.job_id} not run" if main.state in ("", "PENDING",
                                                                          "CANCELLED")
                     else f"; step job {main.job_id} {main.state}")
        return "FAILED", _mover_text(dm, jobs.get(dm.key)) + extra, when
    if main is None or main.job_id is None:
        return "PENDING", waiting or "submitting the step's jobs", when
    if not main.ended:
        if main.state in ("", "PENDING"):
            running = [dm for dm in start if not jobs[dm.key].ended] if all(
                dm.key in jobs for dm in start) else start
            if running:
                return "PENDING", "; ".join(_mover_text(dm, jobs.get(dm.key))
                                            for dm in running), when
            why = f" ({main.reason})" if main.reason else ""
            return "PENDING", f"Slurm job {main.job_id} pending{why}", when
        on = f" on {main.nodes}" if main.nodes else ""
        return main.state, f"Slurm job {main.job_id} {main.state.lower()}{on}", when
    # The step's job ended: stage-out movers, then the outcome.
    why = f" ({main.reason})" if main.reason else ""
    ended = f"Slurm job {main.job_id} ended {main.state}{why}{_exit(main)}"
    if main.state == "GONE":
        ended = f"Slurm job {main.job_id} was forgotten by Slurm before its end was seen"
    running_stop = [dm for dm in stop if (j := jobs.get(dm.key)) is None or not j.ended]
    if running_stop:
        return "STAGE_OUT", ended + "; " + "; ".join(
            _mover_text(dm, jobs.get(dm.key)) for dm in running_stop), when
    status = "FAILED" if main.state == "GONE" else main.state
    if failed_stop:
        return "FAILED", ended + "; " + _mover_text(failed_stop[0],
                                                    jobs.get(failed_stop[0].key)), when
    done = [_mover_text(dm, jobs.get(dm.key)) for dm in stop]
    return status, ended + ("; " + "; ".join(done) if done else ""), when


# --- the manager ------------------------------------------------------------------------


class StepManager:
    def __init__(self, config: Config, store: Store, services: Any,
                 slurm: SlurmClient | None, clock: Callable[[], float] = time.time,
                 home: Callable[[str], str] = home_of):
        self.config = config
        self.store = store
        self.services = services  # ServiceManager: status(name) -> dict | None
        self.slurm = slurm
        self.clock = clock
        self.home = home
        self._lock = threading.Lock()
        self._steps: dict[str, Step] = {}
        self._jobs: dict[str, dict[str, StepJob]] = {}
        self._waiting: dict[str, str] = {}  # name -> what it waits for (not durable)
        self._cancelled: dict[tuple[str, str], float] = {}
        self.worker = Worker("step-worker", self.reconcile, config.reconcile_interval,
                             config.slurm_timeout * 3)
        self._slurm_problem = ""
        self._load()

    def _load(self) -> None:
        for row in self.store.query("SELECT * FROM step"):
            req = StepRequest.from_canonical(ujson.loads(row["request"]))
            self._steps[row["name"]] = Step(row["name"], row["user"], req, row["launch_id"],
                                            row["phase"], row["detail"],
                                            row["abort_requested"], row["created"],
                                            row["updated"])
        for row in self.store.query("SELECT * FROM step_job"):
            self._jobs.setdefault(row["step"], {})[row["key"]] = StepJob(
                row["step"], row["key"], row["job_id"], row["state"], row["reason"],
                row["nodes"], row["exit_code"], row["progress"], row["progress_time"],
                row["updated"])

    # --- requests ---------------------------------------------------------------

    def launch(self, body: Any) -> dict[str, str]:
        req, _ = parse_launch(body, self.config, self.home)
        if self.slurm is None:
            raise NoSlurm()
        now = self.clock()
        with self._lock:
            old = self._steps.get(req.name)
            if old is not None:
                if old.request.canonical() != req.canonical():
                    raise RequestFailed(f"step {req.name} already exists with another request "
                                        "(step names are unique)")
                ticket = self.store.write([])  # the first launch's commit precedes this
                created = False
            else:
                step = Step(req.name, req.user, req, uuid.uuid4().hex[:12], "WAITING", "",
                            None, now, now)
                self._steps[req.name] = step
                self._jobs[req.name] = {}
                ticket = self.store.write([_step_row(step)])
                created = True
        ticket.wait()
        if created:
            log.info("step %s accepted for %s", req.name, req.user)
            self.worker.wake()
        return {"name": req.name, "status": "PENDING",
                "message": "step launch accepted" if created else "step already launched"}

    def progress(self, body: Any) -> dict[str, str]:
        if not isinstance(body, dict):
            raise InvalidRequest("body", f"expected a JSON object, got {_kind(body)}")
        for key in ("step_name", "datamover_name", "progress"):
            if key not in body:
                raise InvalidRequest(key, "is required")
        step_name = check_name(body["step_name"], "step_name")
        dm_name = check_name(body["datamover_name"], "datamover_name")
        text = body["progress"]
        if not isinstance(text, str):
            raise InvalidRequest("progress", f"expected a string, got {_kind(text)}")
        text = "".join(c if c.isprintable() else " " for c in text)[:MAX_PROGRESS]
        now = self.clock()
        with self._lock:
            step = self._steps.get(step_name)
            if step is None:
                raise NotFound("step", step_name)
            if not any(dm.name == dm_name for dm in step.request.movers):
                raise NotFound("data mover", f"{dm_name} of step {step_name}")
            key = f"dm:{dm_name}"
            job = self._jobs[step_name].get(key) or StepJob(step_name, key, updated=now)
            job = replace(job, progress=text, progress_time=now)
            self._jobs[step_name][key] = job
            ticket = self.store.write([_job_row(job)])
        ticket.wait()
        return {"step_name": step_name, "datamover_name": dm_name,
                "message": "progress recorded"}

    def abort(self, name: str) -> dict[str, str]:
        now = self.clock()
        with self._lock:
            step = self._steps.get(name)
            if step is None:
                raise NotFound("step", name)
            if step.abort_requested is None:
                step = replace(step, abort_requested=now, updated=now)
                self._steps[name] = step
                ticket = self.store.write([_step_row(step)])
                first = True
            else:
                ticket = self.store.write([])
                first = False
        ticket.wait()
        if first:
            log.info("step %s: abort requested", name)
            self.worker.wake()
        status = self.status(name) or {}
        return {"name": name, "status": status.get("status", ""),
                "detail": status.get("detail", ""),
                "message": "abort accepted" if first else "abort already requested"}

    # --- status -------------------------------------------------------------------

    def _status(self, step: Step) -> dict[str, str]:
        jobs = dict(self._jobs.get(step.name, {}))
        status, detail, when = derive_status(step, jobs, self._waiting.get(step.name, ""))
        if self._slurm_problem and step.phase not in ("DONE",):
            detail += f" [Slurm unreachable: {self._slurm_problem}]"
        return {"user": step.user, "name": step.name, "status": status, "detail": detail,
                "time": iso_time(when)}

    def status(self, name: str) -> dict[str, str] | None:
        with self._lock:
            step = self._steps.get(name)
            return self._status(step) if step is not None else None

    def statuses(self, user: str | None = None) -> list[dict[str, str]]:
        with self._lock:
            return [self._status(s) for s in sorted(self._steps.values(),
                                                    key=lambda s: (s.created, s.name))
                    if user is None or s.user == user]

    def step(self, name: str) -> Step | None:
        with self._lock:
            return self._steps.get(name)

    def jobs(self, name: str) -> dict[str, StepJob]:
        with self._lock:
            return dict(self._jobs.get(name, {}))

    # --- the worker -----------------------------------------------------------------

    def start(self) -> None:
        if self.slurm is not None:
            self.worker.start()

    def stop(self) -> None:
        self.worker.stop()

    def _settled(self, step: Step) -> bool:
        jobs = self._jobs.get(step.name, {})
        return all(j.job_id is None or j.ended for j in jobs.values())

    def _live(self) -> list[Step]:
        with self._lock:
            return [s for s in self._steps.values()
                    if s.phase in ("WAITING", "SUBMITTED")
                    or (s.phase == "FAILED" and not self._settled(s))]

    def reconcile(self) -> None:
        """One cycle: read every job in one call, then move each live step forward."""
        assert self.slurm is not None
        live = self._live()
        if not live:
            return
        try:
            seen = self.slurm.jobs()
        except (SlurmUnavailable, SlurmError) as e:
            if self._slurm_problem != str(e):
                log.warning("cannot read Slurm jobs (steps wait): %s", e)
            self._slurm_problem = str(e)
            return
        self._slurm_problem = ""
        by_id = {j.job_id: j for j in seen}
        by_tag = {j.comment: j for j in seen if j.comment.startswith(TAG_PREFIX)}
        for step in live:
            try:
                self._advance(step, by_id, by_tag)
            except SlurmUnavailable as e:
                self._slurm_problem = str(e)
                log.warning("Slurm unreachable while handling step %s: %s", step.name, e)
                return
            except WfmError as e:
                log.error("step %s: %s", step.name, e)

    # --- one step ---------------------------------------------------------------------

    def _save_step(self, step: Step, **changes: Any) -> Step:
        with self._lock:
            current = self._steps[step.name]
            new = replace(current, **changes, updated=self.clock())
            self._steps[step.name] = new
            self.store.write([_step_row(new)])
        return new

    def _save_job(self, step: str, key: str, **changes: Any) -> StepJob:
        with self._lock:
            current = self._jobs.setdefault(step, {}).get(key) or StepJob(step, key)
            if current.updated and all(getattr(current, k) == v for k, v in changes.items()):
                return current
            new = replace(current, **changes, updated=self.clock())
            self._jobs[step][key] = new
            self.store.write([_job_row(new)])
        if "state" in changes and changes["state"] != current.state:
            log.info("step %s: %s Slurm job %s %s%s", step, key, new.job_id, new.state,
                     f" ({new.reason})" if new.reason else "")
        return new

    def _refresh(self, step: Step, by_id: dict[int, JobState]) -> None:
        now = self.clock()
        for key, job in self.jobs(step.name).items():
            if job.job_id is None or job.ended:
                continue
            seen = by_id.get(job.job_id)
            if seen is not None and seen.comment != job_tag(step.launch_id, key):
                seen = None  # Slurm gave the id of a job it lost to another job: not ours
            if seen is not None:
                self._save_job(step.name, key, state=seen.state, reason=seen.reason,
                               nodes=",".join(seen.nodes), exit_code=seen.exit_code)
            elif job.state:
                self._save_job(step.name, key, state="GONE", reason="no longer known to Slurm")
            elif job.updated < now - 60:
                self._save_job(step.name, key, state="GONE", reason="never seen in Slurm")

    def _cancel_all(self, step: Step, why: str) -> None:
        assert self.slurm is not None
        now = self.clock()
        for key, job in self.jobs(step.name).items():
            if job.job_id is None or job.ended:
                continue
            sent = self._cancelled.get((step.name, key))
            if sent is not None and now - sent < CANCEL_REPEAT:
                continue
            log.info("step %s: cancelling %s Slurm job %d (%s)", step.name, key, job.job_id, why)
            self._cancelled[(step.name, key)] = now
            # SIGKILL through slurmrestd is scancel: SIGTERM to the tasks, then KILL.
            if not self.slurm.cancel(job.job_id, signal="SIGKILL"):
                self._save_job(step.name, key, state="CANCELLED", reason="cancelled (already "
                               "gone from Slurm)")

    def _advance(self, step: Step, by_id: dict[int, JobState],
                 by_tag: dict[str, JobState]) -> None:
        self._refresh(step, by_id)
        if step.abort_requested is not None:
            self._cancel_all(step, "abort")
            if self._settled(self._steps[step.name]):
                self._save_step(step, phase="DONE")
                self._waiting.pop(step.name, None)
            return
        if step.phase == "FAILED":
            self._cancel_all(step, step.detail)
            return
        if step.phase == "WAITING":
            failure, waiting = self._check_services(step)
            if failure:
                self._fail(step, failure)
                return
            if waiting:
                self._waiting[step.name] = waiting
                return
            self._waiting[step.name] = "submitting the step's jobs"
            try:
                self._submit_all(step, by_tag)
            except SlurmUnavailable:
                raise
            except WfmError as e:
                self._fail(step, f"cannot submit the step's jobs: {e}")
                return
            step = self._save_step(step, phase="SUBMITTED", detail="")
            self._waiting.pop(step.name, None)
            return
        # SUBMITTED
        req = step.request
        jobs = self.jobs(step.name)
        for dm in req.movers:
            job = jobs.get(dm.key)
            if dm.trigger == "step_start" and job and job.ended and job.state != "COMPLETED":
                # The step's job can never start (afterok): cancel it and the stage-out.
                self._cancel_all(step, f"stage-in mover {dm.name} ended {job.state}")
                break
        if self._settled(self._steps[step.name]):
            self._save_step(step, phase="DONE")

    def _check_services(self, step: Step) -> tuple[str, str]:
        """(failure, waiting): what makes the step fail, or what it waits for."""
        waiting = []
        for use in step.request.services:
            st = self.services.status(use.name) if self.services is not None else None
            if st is None:
                return f"service {use.name} is unknown (not reserved, or released long ago)", ""
            if st.get("user") != step.user:
                return (f"service {use.name} belongs to another user; step {step.name} runs "
                        f"as {step.user}"), ""
            status = st.get("status", "")
            if status in USABLE:
                continue
            if status in NOT_USABLE:
                return f"service {use.name} is not usable ({status}: {st.get('detail', '')})", ""
            waiting.append(f"waiting for service {use.name} ({status}: {st.get('detail', '')})")
        return "", "; ".join(waiting)

    def _fail(self, step: Step, detail: str) -> None:
        log.warning("step %s failed: %s", step.name, detail)
        self._waiting.pop(step.name, None)
        step = self._save_step(step, phase="FAILED", detail=detail)
        self._cancel_all(step, "the step failed")

    def _submit_one(self, step: Step, key: str, spec: JobSpec,
                    by_tag: dict[str, JobState]) -> int:
        assert self.slurm is not None
        job = self.jobs(step.name).get(key)
        if job is not None and job.job_id is not None:
            return job.job_id
        found = by_tag.get(job_tag(step.launch_id, key))
        if found is not None:
            log.info("step %s: adopting %s Slurm job %d (submitted before a restart)",
                     step.name, key, found.job_id)
            self._save_job(step.name, key, job_id=found.job_id, state=found.state)
            return found.job_id
        fault("step_before_submit")
        job_id = self.slurm.submit(spec, user=step.user)
        fault("step_after_submit")
        self._save_job(step.name, key, job_id=job_id, state="PENDING")
        log.info("step %s: %s submitted as Slurm job %d for %s", step.name, key, job_id,
                 step.user)
        return job_id

    def _submit_all(self, step: Step, by_tag: dict[str, JobState]) -> None:
        req = step.request
        cmd = translate(req.command, req.command_env, partition=self.config.compute_partition,
                        home=req.home)
        start_ids = []
        for dm in req.movers:
            if dm.trigger == "step_start":
                spec = build_mover_job(self.config, req, dm, step.launch_id, ())
                start_ids.append(self._submit_one(step, dm.key, spec, by_tag))
        spec = build_step_job(self.config, req, cmd, step.launch_id, tuple(start_ids))
        main_id = self._submit_one(step, "main", spec, by_tag)
        for dm in req.movers:
            if dm.trigger == "step_stop":
                spec = build_mover_job(self.config, req, dm, step.launch_id, (main_id,))
                self._submit_one(step, dm.key, spec, by_tag)


__all__ = ["StepManager", "build_mover_job", "build_step_job", "derive_status", "parse_launch"]
