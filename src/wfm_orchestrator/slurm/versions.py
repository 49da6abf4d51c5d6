"""What differs between slurmrestd API versions, in one place: builders, readers, choice.

The client speaks ``v0.0.38`` (Slurm 22.05) and ``v0.0.40``, ``v0.0.41``,
``v0.0.42`` (Slurm 24.11, ``slurmrestd -s openapi/slurmctld``). Each version is
a :class:`Dialect`: how a job description is written (pure builder), how a
listed job, a ping and a cancel answer are read (pure readers). Everything the
versions share (validation, the job script, error bodies, the job id of a
submit answer) stays in :mod:`.jobs` and :mod:`.states`.

Differences, each seen on the real daemons (tests/unit/captured/<version>/):

=================== ============================= =====================================
                    v0.0.38 (22.05)               v0.0.40, v0.0.41, v0.0.42 (24.11)
=================== ============================= =====================================
submit body         ``{"job": {...}, "script"}``  ``{"job": {..., "script"}}``
environment         ``{"K": "V"}``                ``["K=V", ...]``
exact nodes         ``nodelist: "dn1,dn2"``       ``required_nodes: ["dn1", "dn2"]``
excluded nodes      ``exclude_nodes: "a,b"``      ``excluded_nodes: ["a", "b"]``
memory, time limit  ``N``                         ``{"set": true, "number": N}``
exclusive           ``exclusive: "exclusive"``    ``shared: ["none"]`` (sbatch --exclusive)
job_state           ``"COMPLETING"``              ``["COMPLETED", "COMPLETING"]`` (base + flags)
exit_code           raw wait status (768)         ``{status, return_code, signal: {id}}``
times               ``N``                         ``{"set": true, "number": N}``
ping                ``ping: "UP"``                ``pinged: "UP"``
cancel unknown job  500, error 2017               v0.0.40/41: 200, no error (!);
                                                  v0.0.42: 200, ``status[].error.code`` 2017
node state          ``state: "mixed"`` (lower     ``state: ["MIXED", "DRAIN"]``
                    case) + ``state_flags:``      (base + flags, upper case)
                    ``["DRAIN"]``
job on DOWN node    requeued (v0.0.38 ignores     ended NODE_FAIL (reason NodeDown)
                    ``requeue: false``)
=================== ============================= =====================================

The client's ``auto`` takes the newest of :data:`SUPPORTED` that slurmrestd
serves; :func:`offered_versions` reads which versions a slurmrestd serves from its
``/openapi/v3`` document, to say so when it serves none of ours.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequest, SlurmError, SlurmUnavailable
from .jobs import JobSpec, build_job_script, format_dependency, job_environment, validate_spec
from .nodes import NodeState
from .states import (
    TERMINAL_STATES,
    JobState,
    error_number,
    expand_nodes,
    format_errors,
    plain_int,
    raise_for_response,
    slurm_errors,
)

AUTO = "auto"

# Slurm reports a job whose state word carries a flag by the flag, in this order
# (job_state_string() of Slurm 22.05 and 24.11); v0.0.4x lists the base state and its
# flags, and is read the same way so both versions give the same word.
STATE_FLAGS_FIRST = (
    "COMPLETING", "STAGE_OUT", "CONFIGURING", "RESIZING", "REQUEUED", "REQUEUE_FED",
    "REQUEUE_HOLD", "SPECIAL_EXIT", "STOPPED", "REVOKED", "RESV_DEL_HOLD", "SIGNALING",
)
# Cancel answers meaning "nothing to cancel": 2017 invalid job id, 2021 already completing.
_NOTHING_TO_CANCEL = {2017, 2021}


@dataclass(frozen=True)
class Dialect:
    """One API version: its builder and readers (pure functions)."""

    version: str
    slurm: str  # the Slurm release serving it on our clusters
    submit_body: Callable[[JobSpec], dict[str, Any]]
    read_job: Callable[[dict[str, Any]], JobState]
    ping_up: Callable[[dict[str, Any]], bool]
    cancel_errors: Callable[[Any], list[dict[str, Any]]]  # per-job refusals of a 200
    read_node: Callable[[dict[str, Any]], NodeState]
    # Does slurmctld schedule a job as soon as its burst-buffer stage-in completes?
    # 22.05's burst_buffer_lua.c calls queue_job_scheduler() there only for a stage-in
    # with a size (ours have none); 24.11 always does (stage_in_nudge.py).
    schedules_after_stage_in: bool = True


# --- builders -----------------------------------------------------------------


def _shared_fields(spec: JobSpec) -> dict[str, Any]:
    """The fields every version writes the same way."""
    validate_spec(spec)
    job: dict[str, Any] = {
        "name": spec.name,
        "partition": spec.partition,
        "current_working_directory": spec.cwd,
        "standard_output": spec.stdout,
        "requeue": False,
        "nodes": str(len(spec.nodes) or spec.node_count or 1),
    }
    if spec.cpus_per_node is not None:
        # One task per node holding all the node's CPUs: cores are reserved per node.
        job["tasks_per_node"] = 1
        job["cpus_per_task"] = spec.cpus_per_node
    optional = {
        "standard_error": spec.stderr,
        "comment": spec.comment or None,
        "dependency": format_dependency(spec.dependencies) if spec.dependencies else None,
        "tasks": spec.tasks,
        "tasks_per_node": spec.tasks_per_node,
        "cpus_per_task": spec.cpus_per_task,
        "account": spec.account,
        "qos": spec.qos,
    }
    job.update({k: v for k, v in optional.items() if v is not None})
    return job


def _numbers(spec: JobSpec) -> dict[str, int]:
    """memory_per_node, memory_per_cpu (MB) and time_limit (minutes), those given."""
    given = {"memory_per_node": spec.memory_per_node, "memory_per_cpu": spec.memory_per_cpu,
             "time_limit": spec.time_limit}
    return {k: v for k, v in given.items() if v is not None}


def submit_body_v0038(spec: JobSpec) -> dict[str, Any]:
    """``POST /slurm/v0.0.38/job/submit``. ``nodelist`` (sbatch -w) is accepted by 22.05
    although the published schema omits it (``required_nodes`` is a "Disabled key")."""
    job = _shared_fields(spec)
    job["environment"] = job_environment(spec)
    if spec.nodes:
        job["nodelist"] = ",".join(spec.nodes)
    job.update(_numbers(spec))
    if spec.exclusive:
        job["exclusive"] = "exclusive"  # 22.05 refuses "true"; "exclusive" = sbatch --exclusive
    if spec.exclude:
        job["exclude_nodes"] = ",".join(spec.exclude)
    return {"job": job, "script": build_job_script(len(spec.command), spec.bb, spec.launcher)}


def submit_body_v004x(spec: JobSpec) -> dict[str, Any]:
    """``POST /slurm/v0.0.4x/job/submit`` (24.11): lists and ``{"set", "number"}`` numbers."""
    job = _shared_fields(spec)
    job["environment"] = [f"{k}={v}" for k, v in job_environment(spec).items()]
    if spec.nodes:
        job["required_nodes"] = list(spec.nodes)
    job.update({k: {"set": True, "number": v} for k, v in _numbers(spec).items()})
    if spec.exclusive:
        job["shared"] = ["none"]  # what sbatch --exclusive sets
    if spec.exclude:
        job["excluded_nodes"] = list(spec.exclude)
    job["script"] = build_job_script(len(spec.command), spec.bb, spec.launcher)
    return {"job": job}


# --- readers ------------------------------------------------------------------


def _job_state(job: dict[str, Any], state: str, exit_code: int | None, signal: int,
               number: Callable[[Any], int]) -> JobState:
    reason = str(job.get("state_reason") or "")
    return JobState(
        job_id=plain_int(job.get("job_id")),
        name=str(job.get("name") or ""),
        comment=str(job.get("comment") or ""),
        state=state,
        reason="" if reason == "None" else reason,
        nodes=expand_nodes(job.get("nodes")),
        exit_code=exit_code if state in TERMINAL_STATES else None,
        user=str(job.get("user_name") or ""),
        partition=str(job.get("partition") or ""),
        signal=signal if state in TERMINAL_STATES else 0,
        submit_time=number(job.get("submit_time")),
        start_time=number(job.get("start_time")),
        end_time=number(job.get("end_time")),
        burst_buffer_state=str(job.get("burst_buffer_state") or ""),
        burst_buffer=str(job.get("burst_buffer") or ""),
    )


def read_job_v0038(job: dict[str, Any]) -> JobState:
    """One job of ``GET /slurm/v0.0.38/jobs``: exit_code is the raw wait status."""
    state = str(job.get("job_state") or "UNKNOWN").split()[0].upper()
    raw = job.get("exit_code")
    exit_code, signal = None, 0
    if isinstance(raw, int) and not isinstance(raw, bool):
        signal = raw & 0x7F
        exit_code = 128 + signal if signal else (raw >> 8) & 0xFF
    return _job_state(job, state, exit_code, signal, plain_int)


def set_number(value: Any) -> int:
    """N of ``{"set": true, "number": N}`` (0 when unset); a plain int is taken as is."""
    if isinstance(value, Mapping):
        return plain_int(value.get("number")) if value.get("set") else 0
    return plain_int(value)


def state_word(words: Any) -> str:
    """The one word Slurm's own tools show for a v0.0.4x ``job_state`` list."""
    listed = [str(w).upper() for w in words] if isinstance(words, list) else [str(words)]
    for flag in STATE_FLAGS_FIRST:
        if flag in listed:
            return flag
    return listed[0] if listed and listed[0] else "UNKNOWN"


def read_job_v004x(job: dict[str, Any]) -> JobState:
    """One job of ``GET /slurm/v0.0.4x/jobs``: exit_code is ``{status, return_code, signal}``."""
    raw = job.get("exit_code")
    exit_code, signal = None, 0
    if isinstance(raw, Mapping):
        sig = raw.get("signal")
        signal = set_number(sig.get("id")) if isinstance(sig, Mapping) else 0
        code = raw.get("return_code")
        if signal:
            exit_code = 128 + signal
        elif isinstance(code, Mapping) and code.get("set"):
            exit_code = set_number(code)
    return _job_state(job, state_word(job.get("job_state")), exit_code, signal, set_number)


def _words(value: Any) -> tuple[str, ...]:
    """A list of Slurm words (or one word) in upper case, empty ones left out."""
    listed = value if isinstance(value, list) else [value]
    return tuple(str(w).upper() for w in listed if w not in (None, ""))


def _node_state(node: dict[str, Any], words: tuple[str, ...], flags: tuple[str, ...]
                ) -> NodeState:
    return NodeState(name=str(node.get("name") or ""),
                     state=words[0] if words else "UNKNOWN",
                     flags=tuple(dict.fromkeys((*words[1:], *flags))),
                     reason=str(node.get("reason") or ""),
                     partitions=tuple(str(p) for p in node.get("partitions") or ()
                                      if isinstance(p, str)))


def read_node_v0038(node: dict[str, Any]) -> NodeState:
    """One node of ``GET /slurm/v0.0.38/nodes``: ``state`` one word, ``state_flags`` a list."""
    return _node_state(node, _words(node.get("state")), _words(node.get("state_flags")))


def read_node_v004x(node: dict[str, Any]) -> NodeState:
    """One node of ``GET /slurm/v0.0.4x/nodes``: ``state`` lists the base state and flags."""
    return _node_state(node, _words(node.get("state")), ())


def cancel_errors_none(body: Any) -> list[dict[str, Any]]:
    """v0.0.38 to v0.0.41 put a cancel's refusals in ``errors`` (an HTTP error) only."""
    return []


def cancel_errors_v0042(body: Any) -> list[dict[str, Any]]:
    """v0.0.42 answers 200 with ``status: [{error: {code, string}, job_id}]`` per job."""
    found = []
    for entry in (body.get("status") if isinstance(body, dict) else None) or []:
        err = entry.get("error") if isinstance(entry, dict) else None
        if isinstance(err, dict) and plain_int(err.get("code")):
            found.append({"error_number": plain_int(err.get("code")),
                          "error": str(err.get("string") or ""),
                          "description": str(err.get("message") or ""), "source": "cancel"})
    return found


V0038 = Dialect("v0.0.38", "22.05", submit_body_v0038, read_job_v0038,
                lambda p: p.get("ping") == "UP", cancel_errors_none, read_node_v0038,
                schedules_after_stage_in=False)
DIALECTS: dict[str, Dialect] = {d.version: d for d in (
    Dialect("v0.0.42", "24.11", submit_body_v004x, read_job_v004x,
            lambda p: p.get("pinged") == "UP", cancel_errors_v0042, read_node_v004x),
    Dialect("v0.0.41", "24.11", submit_body_v004x, read_job_v004x,
            lambda p: p.get("pinged") == "UP", cancel_errors_none, read_node_v004x),
    Dialect("v0.0.40", "24.11", submit_body_v004x, read_job_v004x,
            lambda p: p.get("pinged") == "UP", cancel_errors_none, read_node_v004x),
    V0038,
)}
SUPPORTED = tuple(DIALECTS)  # newest first


def dialect(api_version: str) -> Dialect:
    try:
        return DIALECTS[api_version]
    except KeyError:
        raise InvalidRequest("api_version", f"{api_version!r} is not supported "
                                            f"({', '.join(SUPPORTED)})") from None


# --- the version-dependent calls ------------------------------------------------


def build_submit_body(spec: JobSpec, api_version: str) -> dict[str, Any]:
    """The whole JSON body of ``POST /slurm/<version>/job/submit``."""
    return dialect(api_version).submit_body(spec)


def parse_jobs(status: int, body: Any, api_version: str, what: str = "read jobs",
               text: str = "") -> list[JobState]:
    """Every job of a ``GET .../jobs`` or ``GET .../job/{id}`` response."""
    read = dialect(api_version).read_job
    raise_for_response(status, body, what, text)
    jobs = body.get("jobs") if isinstance(body, dict) else None
    if not isinstance(jobs, list):
        raise SlurmError(f"{what}: the response has no jobs list", status, [])
    return [read(j) for j in jobs if isinstance(j, dict)]


def parse_job_states(status: int, body: Any, job_ids: Iterable[int], api_version: str,
                     text: str = "") -> dict[int, JobState]:
    """The states of ``job_ids`` found in a ``GET .../jobs`` response (unknown ids left out)."""
    wanted = set(job_ids)
    return {j.job_id: j for j in parse_jobs(status, body, api_version, "read job states", text)
            if j.job_id in wanted}


def parse_nodes(status: int, body: Any, api_version: str, text: str = "") -> list[NodeState]:
    """Every node of a ``GET .../nodes`` response."""
    read = dialect(api_version).read_node
    raise_for_response(status, body, "read nodes", text)
    nodes = body.get("nodes") if isinstance(body, dict) else None
    if not isinstance(nodes, list):
        raise SlurmError("read nodes: the response has no nodes list", status, [])
    return [read(n) for n in nodes if isinstance(n, dict)]


def parse_ping(status: int, body: Any, api_version: str, text: str = "") -> list[dict[str, Any]]:
    """The ``pings`` of ``GET .../ping``; raises SlurmUnavailable if no controller is UP."""
    up = dialect(api_version).ping_up
    raise_for_response(status, body, "ping", text)
    pings = body.get("pings") if isinstance(body, dict) else None
    if not isinstance(pings, list) or not any(isinstance(p, dict) and up(p) for p in pings):
        raise SlurmUnavailable(f"ping: no slurmctld is UP: {pings!r}", status, [])
    return pings


def parse_cancel(status: int, body: Any, api_version: str, what: str = "cancel",
                 text: str = "") -> bool:
    """True when Slurm took the signal; False when there was nothing to cancel (unknown or
    already ended). v0.0.40 and v0.0.41 answer 200 for an unknown job: True there."""
    errors = slurm_errors(body) if status != 200 else dialect(api_version).cancel_errors(body)
    if any(error_number(e) in _NOTHING_TO_CANCEL for e in errors):
        return False
    raise_for_response(status, body, what, text)
    if errors:
        raise SlurmError(f"{what}: {format_errors(errors)}", status, errors)
    return True


# --- which version --------------------------------------------------------------

_PATH_VERSION = re.compile(r"^/slurm/(v\d+\.\d+\.\d+)/")


def offered_versions(openapi: Any) -> list[str]:
    """The ``/slurm/<version>/`` versions a slurmrestd's ``/openapi/v3`` document lists."""
    paths = openapi.get("paths") if isinstance(openapi, dict) else None
    found = {m.group(1) for p in (paths or {}) if (m := _PATH_VERSION.match(str(p)))}
    return sorted(found, key=lambda v: tuple(int(x) for x in v[1:].split(".")), reverse=True)


def no_common_version(url: str, offered: Iterable[str]) -> str:
    """The sentence statuses and the log show when slurmrestd serves none of our versions."""
    listed = ", ".join(offered) or "none"
    return (f"slurmrestd at {url} serves API versions {listed}; this orchestrator speaks "
            f"{', '.join(SUPPORTED)} (Slurm 22.05 to 24.11): run slurmrestd with a plugin "
            f"of one of these (22.05: -s openapi/v0.0.38; 24.11: -s openapi/slurmctld)")
