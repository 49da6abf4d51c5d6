"""Pure builders: a JobSpec -> the job script and the JSON body of ``POST .../job/submit``.

Nothing here does I/O. Every value that may come from a request is either
validated against a strict pattern (job name, partition, node names,
burst-buffer directive words) or carried as *data* (environment values,
the command's argv), never as script text:

* the script is a fixed template; its only variable parts are the
  ``#BB_LUA`` header lines, built from validated words, the optional
  launcher (validated words, quoted) and the argument count (an int);
* the command's argv travels in the job environment as ``WFM_ARGV_<i>``
  and the script runs it with ``exec -- "${args[@]}"``: no shell ever
  parses it. (The API's own ``argv`` field is not used: sending it makes
  slurmrestd 22.05.8 crash with a general protection fault.)

Refusals raise :class:`~wfm_orchestrator.errors.InvalidRequest` (a
ValueError) naming the field.

What differs between API versions (how the job description is written, e.g.
``environment`` as a dict or a list of ``K=V``) is in :mod:`.versions`, whose
``build_submit_body(spec, api_version)`` puts this module's parts together.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import InvalidRequest

# --- limits and patterns ------------------------------------------------------

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")  # job names, service/step names
PARTITION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
BB_WORD_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")  # directive verb and keys
# Directive values: names, and lists of names with access hints (svc1:RO,svc2:RW).
BB_VALUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:,-]{0,1023}$")
LAUNCHER_WORD_RE = re.compile(r"^[A-Za-z0-9_./=:,+-]{1,256}$")
COMMENT_RE = re.compile(r"^[\x20-\x7e]{0,1024}$")  # printable ASCII, no control characters
DEPENDENCY_TYPES = ("after", "afterany", "afterok", "afternotok", "aftercorr")
MAX_VALUE_CHARS = 128 * 1024  # Linux MAX_ARG_STRLEN: one environment string
MAX_TOTAL_CHARS = 1024 * 1024  # whole environment + argv
MAX_PATH_CHARS = 4096
MAX_ARGS = 4096
RESERVED_ENV = re.compile(r"^(SLURM_|SBATCH_|SRUN_|WFM_ARGV_|WFM_ARGC$|BASH_FUNC_)")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# --- specifications -----------------------------------------------------------


@dataclass(frozen=True)
class BBDirective:
    """One ``#BB_LUA <verb> key=value ...`` line of a job script's header.

    ``verb`` and keys match ``[a-z][a-z0-9_]*``; values match
    ``[A-Za-z0-9_.:,-]+`` (names, or lists such as ``svc1:RO,svc2:RW``).
    """

    verb: str
    params: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, verb: str, **params: str) -> BBDirective:
        return cls(verb, tuple(params.items()))


def service_directive(name: str) -> BBDirective:
    """``#BB_LUA wfm_service name=<name>``: the ES job of reservation ``name``.

    The directive grammar is the plugin's (docs/burst_buffer_plugin.md).
    """
    return BBDirective.of("wfm_service", name=name)


USE_HINTS = ("RO", "RW", "WO")


def use_directive(name: str, hint: str = "RW") -> BBDirective:
    """``#BB_LUA wfm_use name=<name> hint=<RO|RW|WO>``: a step job uses service ``name``."""
    if hint not in USE_HINTS:
        raise InvalidRequest("hint", f"{hint!r} is invalid: expected RO, RW or WO")
    return BBDirective.of("wfm_use", name=name, hint=hint)


@dataclass(frozen=True)
class Dependency:
    """``afterok:12:13`` -- start after jobs 12 and 13 ended as the type says."""

    type: str
    job_ids: tuple[int, ...]


@dataclass(frozen=True)
class JobSpec:
    """What to run, where, as data. Build it freely; :func:`validate_spec` checks it.

    name            Slurm job name (``[A-Za-z0-9][A-Za-z0-9_.-]*``, <= 200)
    command         argv of the program to run (argv[0] must not start with ``-``)
    partition       Slurm partition
    nodes           exact nodes to run on (Slurm's nodelist); the node count is len(nodes)
    node_count      number of nodes when ``nodes`` is empty (default 1)
    cpus_per_node   CPUs on each node (one task per node with that many CPUs)
    memory_per_node MB on each node
    environment     extra variables (PATH defaults to a system PATH)
    cwd             absolute working directory (default: /tmp)
    comment         printable ASCII tag, e.g. to find the job after a restart
    dependencies    Dependency records, all required (joined with ``,``)
    stdout, stderr  absolute paths (Slurm's %j etc. allowed); default /dev/null
    time_limit      minutes, or None for the partition's limit
    bb              BBDirective lines of the script header
    launcher        words put before the command, e.g. ("srun", "--ntasks-per-node=1")

    Step jobs (sbatch options, all optional; ``cpus_per_node`` excludes them):
    tasks           -n/--ntasks
    tasks_per_node  --ntasks-per-node
    cpus_per_task   -c/--cpus-per-task
    memory_per_cpu  --mem-per-cpu, MB (excludes ``memory_per_node``)
    exclusive       --exclusive
    account, qos    -A/--account, -q/--qos
    exclude         nodes the job must not run on (sbatch -x)
    """

    name: str
    command: Sequence[str]
    partition: str
    nodes: Sequence[str] = ()
    node_count: int | None = None
    cpus_per_node: int | None = None
    memory_per_node: int | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    cwd: str = "/tmp"  # noqa: S108 - a job's default working directory, not a temp file
    comment: str = ""
    dependencies: Sequence[Dependency] = ()
    stdout: str = "/dev/null"
    stderr: str | None = None
    time_limit: int | None = None
    bb: Sequence[BBDirective] = ()
    launcher: Sequence[str] = ()
    tasks: int | None = None
    tasks_per_node: int | None = None
    cpus_per_task: int | None = None
    memory_per_cpu: int | None = None
    exclusive: bool = False
    account: str | None = None
    qos: str | None = None
    exclude: Sequence[str] = ()


# --- validation ---------------------------------------------------------------


def check_text(field_name: str, value: object, max_chars: int = MAX_VALUE_CHARS) -> str:
    """A str that is valid Unicode (no lone surrogates from non-UTF-8 bytes), no NUL."""
    if not isinstance(value, str):
        raise InvalidRequest(field_name, f"expected a string, got {type(value).__name__}")
    if len(value) > max_chars:
        raise InvalidRequest(field_name, f"too long ({len(value)} characters, at most {max_chars})")
    if "\0" in value:
        raise InvalidRequest(field_name, "contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(field_name, "is not valid UTF-8 text") from None
    return value


def _match(field_name: str, value: object, pattern: re.Pattern[str], what: str) -> str:
    text = check_text(field_name, value, 2048)
    if not pattern.fullmatch(text):  # "$" alone lets a trailing newline through
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise InvalidRequest(field_name, f"{shown!r} is invalid: expected {what}")
    return text


def _positive(field_name: str, value: object, upper: int = 10**9) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= upper:
        raise InvalidRequest(field_name, f"{value!r} is invalid: expected an integer "
                                         f"from 1 to {upper}")
    return value


def _path(field_name: str, value: object) -> str:
    text = check_text(field_name, value, MAX_PATH_CHARS)
    if not text.startswith("/"):
        raise InvalidRequest(field_name, f"{text[:80]!r} is invalid: expected an absolute path")
    if any(c in text for c in "\n\r"):
        raise InvalidRequest(field_name, "contains a line break")
    return text


def validate_bb(directive: object, field_name: str = "bb") -> BBDirective:
    if not isinstance(directive, BBDirective):
        raise InvalidRequest(field_name, "expected BBDirective records")
    _match(f"{field_name}.verb", directive.verb, BB_WORD_RE, "a lower-case word")
    for key, value in directive.params:
        _match(f"{field_name}.{key!s:.40}", key, BB_WORD_RE, "a lower-case word")
        _match(f"{field_name}.{key}", value, BB_VALUE_RE,
               "letters, digits, '_', '.', ':', ',', '-' (starting with a letter or digit)")
    return directive


def validate_environment(env: object, argv_chars: int = 0) -> dict[str, str]:
    if not isinstance(env, Mapping):
        raise InvalidRequest("environment", "expected a mapping of names to values")
    total = argv_chars
    out: dict[str, str] = {}
    for name, value in env.items():
        _match("environment", name, ENV_NAME_RE, "a variable name ([A-Za-z_][A-Za-z0-9_]*)")
        if RESERVED_ENV.match(name):
            raise InvalidRequest("environment", f"{name} is reserved (SLURM_*, SBATCH_*, "
                                                "SRUN_*, WFM_ARGC, WFM_ARGV_*, BASH_FUNC_*)")
        out[name] = check_text(f"environment.{name}", value)
        total += len(name) + len(value) + 2
    if total > MAX_TOTAL_CHARS:
        raise InvalidRequest("environment", f"environment and command too large ({total} "
                                            f"characters, at most {MAX_TOTAL_CHARS})")
    return out


def validate_command(command: object) -> tuple[str, ...]:
    if isinstance(command, (str, bytes)) or not isinstance(command, Sequence):
        raise InvalidRequest("command", "expected a list of arguments (argv), not a string")
    if not command:
        raise InvalidRequest("command", "is empty")
    if len(command) > MAX_ARGS:
        raise InvalidRequest("command", f"too many arguments ({len(command)}, at most {MAX_ARGS})")
    argv = tuple(check_text(f"command[{i}]", a) for i, a in enumerate(command))
    if not argv[0] or argv[0].startswith("-"):
        raise InvalidRequest("command[0]", "must name a program (empty or starting with '-')")
    return argv


def validate_spec(spec: JobSpec) -> JobSpec:
    """Check every field of ``spec``; return it unchanged or raise InvalidRequest."""
    if not isinstance(spec, JobSpec):
        raise InvalidRequest("job", "expected a JobSpec")
    _match("name", spec.name, NAME_RE, "letters, digits, '_', '.', '-' (at most 200, "
                                       "starting with a letter or digit)")
    _match("partition", spec.partition, PARTITION_RE, "a partition name")
    if isinstance(spec.nodes, str):
        raise InvalidRequest("nodes", "expected a list of node names")
    for node in spec.nodes:
        _match("nodes", node, NODE_RE, "a node name")
    if len(set(spec.nodes)) != len(spec.nodes):
        raise InvalidRequest("nodes", "a node is named twice")
    if spec.node_count is not None:
        _positive("node_count", spec.node_count, 100000)
        if spec.nodes and spec.node_count != len(spec.nodes):
            raise InvalidRequest("node_count", "differs from the number of nodes named")
    if spec.cpus_per_node is not None:
        _positive("cpus_per_node", spec.cpus_per_node, 100000)
    if spec.memory_per_node is not None:
        _positive("memory_per_node", spec.memory_per_node, 2**40)
    if spec.time_limit is not None:
        _positive("time_limit", spec.time_limit, 10**7)
    for name in ("tasks", "tasks_per_node", "cpus_per_task"):
        if getattr(spec, name) is not None:
            _positive(name, getattr(spec, name), 100000)
    if spec.cpus_per_node is not None and (spec.tasks_per_node is not None
                                           or spec.cpus_per_task is not None):
        raise InvalidRequest("cpus_per_node", "excludes tasks_per_node and cpus_per_task")
    if spec.memory_per_cpu is not None:
        _positive("memory_per_cpu", spec.memory_per_cpu, 2**40)
        if spec.memory_per_node is not None:
            raise InvalidRequest("memory_per_cpu", "excludes memory_per_node")
    if not isinstance(spec.exclusive, bool):
        raise InvalidRequest("exclusive", "expected true or false")
    for name in ("account", "qos"):
        if getattr(spec, name) is not None:
            _match(name, getattr(spec, name), PARTITION_RE, f"an {name} name")
    if isinstance(spec.exclude, str):
        raise InvalidRequest("exclude", "expected a list of node names")
    for node in spec.exclude:
        _match("exclude", node, NODE_RE, "a node name")
    argv = validate_command(spec.command)
    validate_environment(spec.environment, sum(len(a) + 16 for a in argv))
    _path("cwd", spec.cwd)
    _path("stdout", spec.stdout)
    if spec.stderr is not None:
        _path("stderr", spec.stderr)
    _match("comment", spec.comment, COMMENT_RE, "printable ASCII, at most 1024 characters")
    for dep in spec.dependencies:
        if not isinstance(dep, Dependency) or dep.type not in DEPENDENCY_TYPES:
            raise InvalidRequest("dependencies", f"expected Dependency records with a type "
                                                 f"in {', '.join(DEPENDENCY_TYPES)}")
        if not dep.job_ids:
            raise InvalidRequest("dependencies", f"{dep.type} names no job")
        for jid in dep.job_ids:
            _positive("dependencies", jid, 2**32 - 1)
    if isinstance(spec.bb, BBDirective):
        raise InvalidRequest("bb", "expected a list of BBDirective")
    for d in spec.bb:
        validate_bb(d)
    if isinstance(spec.launcher, str):
        raise InvalidRequest("launcher", "expected a list of words")
    for word in spec.launcher:
        _match("launcher", word, LAUNCHER_WORD_RE, "a word of letters, digits and _./=:,+-")
    if spec.launcher and spec.launcher[0].startswith("-"):
        raise InvalidRequest("launcher", "must start with a program name")
    return spec


# --- builders -----------------------------------------------------------------


def format_bb(directive: BBDirective) -> str:
    """``#BB_LUA verb k=v ...`` from a validated directive."""
    validate_bb(directive)
    words = [directive.verb] + [f"{k}={v}" for k, v in directive.params]
    return "#BB_LUA " + " ".join(words)


def format_dependency(deps: Sequence[Dependency]) -> str:
    """``afterok:1:2,afterany:3`` (``,`` = all must hold)."""
    return ",".join(f"{d.type}:" + ":".join(str(j) for j in d.job_ids) for d in deps)


def build_job_script(argc: int, bb: Sequence[BBDirective] = (),
                     launcher: Sequence[str] = ()) -> str:
    """The batch script: header directives, then run ``WFM_ARGV_0..argc-1`` as argv.

    The command itself is not in the text: the script rebuilds argv from the
    environment with indirect expansion (``${!name}``), which never evaluates
    the values.
    """
    if isinstance(argc, bool) or not isinstance(argc, int) or not 1 <= argc <= MAX_ARGS:
        raise InvalidRequest("command", f"argument count {argc!r} out of range")
    lines = ["#!/bin/bash"]
    lines += [format_bb(d) for d in bb]
    run = " ".join(shlex.quote(_match("launcher", w, LAUNCHER_WORD_RE, "a word"))
                   for w in launcher)
    lines += [
        "# Generated by wfm-orchestrator: the command is in WFM_ARGV_0.. (data, never parsed).",
        "set -u",
        "args=()",
        f"for ((i = 0; i < {argc}; i++)); do",
        '    var="WFM_ARGV_$i"',
        '    args+=("${!var}")',
        '    unset "$var"',
        "done",
        f"exec {run + ' ' if run else '-- '}\"${{args[@]}}\"",
    ]
    return "\n".join(lines) + "\n"


def job_environment(spec: JobSpec) -> dict[str, str]:
    """The job's environment: PATH, the caller's variables, then the argv."""
    argv = validate_command(spec.command)
    env = {"PATH": DEFAULT_PATH}
    env.update(validate_environment(spec.environment, sum(len(a) + 16 for a in argv)))
    env["WFM_ARGC"] = str(len(argv))
    for i, arg in enumerate(argv):
        env[f"WFM_ARGV_{i}"] = arg
    return env
