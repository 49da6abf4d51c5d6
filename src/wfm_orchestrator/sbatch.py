"""A step's ``command`` (what a user gives to ``sbatch``) -> the parts of a JobSpec (pure).

The command is split into words like a shell would split them (``shlex``,
POSIX rules: quotes and backslashes group words) but **no shell ever runs
it**: the words are read as ``sbatch`` options, then the script path and its
arguments, or ``--wrap``. Variables (``$NAME``, ``${NAME}``) are replaced by
the orchestrator from ``command_env`` *inside one word* (a value never splits
into new words or options); ``$$`` is a literal ``$``; an unknown variable is
refused with its name. In a ``--wrap`` text, which ``/bin/sh`` runs as the
user in the job, a value is inserted shell-quoted, so it stays one literal
word there too.

The job never reads the script in the orchestrator (which runs as root): the
job's argv is a fixed ``/bin/bash -c`` program that, on the compute node, as
the user, reads the script's ``#!`` line and runs the script with its
interpreter (``/bin/bash`` without one) -- exactly the files the user could
run himself. ``#SBATCH`` lines in the script are not read (give the options
on the command line); ``#BB_LUA`` lines there are not read either.

Supported options (docs/steps.md has the table): -J/--job-name (accepted,
the job is named after the step), -N/--nodes, -n/--ntasks, -c/--cpus-per-task,
--ntasks-per-node, --mem, --mem-per-cpu, -t/--time, -o/--output, -e/--error,
-D/--chdir, --exclusive, -p/--partition (must be the compute partition),
-A/--account, -q/--qos, --wrap. Anything else is refused with its name.
"""

from __future__ import annotations

import math
import posixpath
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequest
from .slurm.jobs import check_text

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Variables that change how the job's bash/sh or the dynamic loader behave, and
# the namespaces of Slurm and of the orchestrator itself.
DENIED_ENV_RE = re.compile(
    r"^(LD_.*|BASH_ENV|ENV|SHELLOPTS|BASHOPTS|BASH_XTRACEFD|PS4|IFS|CDPATH|GLOBIGNORE"
    r"|BASH_FUNC_.*|SLURM_.*|SPANK_.*|SBATCH_.*|SRUN_.*|SALLOC_.*|WFM_.*)$")
DENIED_ENV_RULE = ("LD_*, BASH_ENV, ENV, SHELLOPTS, BASHOPTS, BASH_XTRACEFD, PS4, IFS, CDPATH, "
                   "GLOBIGNORE, BASH_FUNC_*, SLURM_*, SPANK_*, SBATCH_*, SRUN_*, SALLOC_*, WFM_*")
MAX_COMMAND_CHARS = 64 * 1024
MAX_ENV_CHARS = 256 * 1024
MAX_ENV_ITEMS = 512
VAR_RE = re.compile(r"\$(?:\$|\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
NAME_WORD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# Run the script as the user, with the interpreter of its #! line (Linux rules:
# the first word is the interpreter, the rest one argument), else /bin/bash.
# $0 is the script path, "$@" its arguments: data, never evaluated.
RUN_SCRIPT = (
    'line=""; IFS= read -r line < "$0" || [ -n "$line" ] || true; '
    'if [ "${line:0:2}" = "#!" ]; then '
    'rest="${line:2}"; rest="${rest#"${rest%%[![:space:]]*}"}"; '
    'interp="${rest%%[[:space:]]*}"; arg="${rest#"$interp"}"; '
    'arg="${arg#"${arg%%[![:space:]]*}"}"; arg="${arg%"${arg##*[![:space:]]}"}"; '
    'if [ -n "$arg" ]; then exec -- "$interp" "$arg" "$0" "$@"; fi; '
    'exec -- "$interp" "$0" "$@"; fi; '
    'exec /bin/bash -- "$0" "$@"'
)


@dataclass(frozen=True)
class Option:
    name: str  # canonical long name
    value: bool  # takes a value


OPTIONS: dict[str, Option] = {}
for _short, _long, _value in [
    ("J", "job-name", True), ("N", "nodes", True), ("n", "ntasks", True),
    ("c", "cpus-per-task", True), (None, "ntasks-per-node", True), (None, "mem", True),
    (None, "mem-per-cpu", True), ("t", "time", True), ("o", "output", True),
    ("e", "error", True), ("D", "chdir", True), (None, "exclusive", False),
    ("p", "partition", True), ("A", "account", True), ("q", "qos", True),
    (None, "wrap", True),
]:
    _opt = Option(_long, _value)
    OPTIONS[f"--{_long}"] = _opt
    if _short:
        OPTIONS[f"-{_short}"] = _opt
SUPPORTED = ", ".join(sorted({o.name for o in OPTIONS.values()}))


@dataclass(frozen=True)
class StepCommand:
    """The job a command asks for. ``None`` = Slurm's default."""

    argv: tuple[str, ...]
    nodes: int | None = None
    tasks: int | None = None
    tasks_per_node: int | None = None
    cpus_per_task: int | None = None
    memory_per_node: int | None = None  # MB
    memory_per_cpu: int | None = None  # MB
    time_limit: int | None = None  # minutes
    stdout: str | None = None
    stderr: str | None = None
    cwd: str | None = None
    exclusive: bool = False
    account: str | None = None
    qos: str | None = None
    job_name: str | None = None  # given with -J: not used (the job is named after the step)


# --- command_env ----------------------------------------------------------------


def parse_command_env(value: Any, field: str = "command_env") -> dict[str, str]:
    """``command_env`` -> {name: value}.

    Accepted: a string of ``KEY=value`` items separated by whitespace or new
    lines (quotes group a value with spaces: ``A="x y"``), a list of
    ``"KEY=value"`` strings (taken verbatim), or an object {KEY: value}.
    """
    if value is None or value == "":
        return {}
    items: list[tuple[str, str]] = []
    if isinstance(value, str):
        check_text(field, value, MAX_ENV_CHARS)
        try:
            words = shlex.split(value, posix=True)
        except ValueError as e:
            raise InvalidRequest(field, f"cannot be split into KEY=value items: {e}") from None
        for word in words:
            items.append(_split_item(word, field))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise InvalidRequest(f"{field}[{i}]", "expected a \"KEY=value\" string")
            check_text(f"{field}[{i}]", item, MAX_ENV_CHARS)
            items.append(_split_item(item, f"{field}[{i}]"))
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(v, str):
                raise InvalidRequest(f"{field}.{str(k)[:40]}", "expected a string value")
            check_text(f"{field}.{str(k)[:40]}", v, MAX_ENV_CHARS)
            items.append((k, v))
    else:
        raise InvalidRequest(field, "expected a string of KEY=value items, a list of "
                                    "\"KEY=value\" strings or an object")
    if len(items) > MAX_ENV_ITEMS:
        raise InvalidRequest(field, f"too many variables ({len(items)}, at most {MAX_ENV_ITEMS})")
    env: dict[str, str] = {}
    total = 0
    for name, val in items:
        check_env_name(name, field)
        if name in env:
            raise InvalidRequest(field, f"{name} is given twice")
        env[name] = val
        total += len(name) + len(val) + 2
    if total > MAX_ENV_CHARS:
        raise InvalidRequest(field, f"too large ({total} characters, at most {MAX_ENV_CHARS})")
    return env


def _split_item(item: str, field: str) -> tuple[str, str]:
    name, sep, val = item.partition("=")
    if not sep:
        raise InvalidRequest(field, f"{_shown(item)} is not a KEY=value item")
    return name, val


def check_env_name(name: str, field: str = "command_env") -> str:
    if not ENV_NAME_RE.fullmatch(name):  # "$" alone lets a trailing newline through
        raise InvalidRequest(field, f"{_shown(name)} is not a variable name "
                                    "([A-Za-z_][A-Za-z0-9_]*, at most 128 characters)")
    if DENIED_ENV_RE.match(name):
        raise InvalidRequest(field, f"{name} may not be set (denied: {DENIED_ENV_RULE})")
    return name


def _shown(value: str) -> str:
    return repr(value if len(value) <= 64 else value[:61] + "...")


# --- variables --------------------------------------------------------------------


def substitute(word: str, env: Mapping[str, str], field: str = "command",
               quote: bool = False) -> str:
    """Replace ``$NAME`` / ``${NAME}`` in one word; ``$$`` -> ``$``; unknown -> refused."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) if m.group(1) is not None else m.group(2)
        if not ENV_NAME_RE.fullmatch(name or ""):
            raise InvalidRequest(field, f"{_shown(m.group(0))} is not a variable reference "
                                        "(write $$ for a literal $)")
        if name not in env:
            raise InvalidRequest(field, f"variable {name} is not defined by command_env "
                                        "(write $$ for a literal $)")
        return shlex.quote(env[name]) if quote else env[name]

    return VAR_RE.sub(repl, word)


# --- values -----------------------------------------------------------------------


def _count(value: str, option: str, upper: int = 100000) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", value) or not 1 <= int(value) <= upper:
        raise InvalidRequest("command", f"{option} {_shown(value)}: expected an integer from "
                                        f"1 to {upper}")
    return int(value)


_MEM_UNITS = {"": 1.0, "K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0 * 1024}


def parse_memory(value: str, option: str = "--mem") -> int:
    """Slurm's --mem syntax: a number with an optional K, M (default), G or T -> MB."""
    m = re.fullmatch(r"([0-9]{1,12})([KMGT]?)B?", value.strip(), re.IGNORECASE)
    if not m:
        raise InvalidRequest("command", f"{option} {_shown(value)}: expected a size such as "
                                        "2048, 500M or 4G")
    mb = math.ceil(int(m.group(1)) * _MEM_UNITS[m.group(2).upper()])
    if not 1 <= mb <= 2**40:
        raise InvalidRequest("command", f"{option} {_shown(value)}: out of range")
    return mb


def parse_time(value: str, option: str = "--time") -> int | None:
    """Slurm's time formats -> minutes (seconds rounded up); UNLIMITED/INFINITE -> None."""
    v = value.strip()
    if v.upper() in ("UNLIMITED", "INFINITE"):
        return None
    m = re.fullmatch(r"(?:([0-9]{1,5})-)?([0-9]{1,7})(?::([0-9]{1,2}))?(?::([0-9]{1,2}))?", v)
    if not m:
        raise InvalidRequest("command", f"{option} {_shown(value)}: expected minutes, MM:SS, "
                                        "HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS")
    days, a, b, c = m.groups()
    a_i, b_i, c_i = int(a), int(b or 0), int(c or 0)
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + a_i * 3600 + b_i * 60 + c_i
    elif c is not None:  # HH:MM:SS
        seconds = a_i * 3600 + b_i * 60 + c_i
    elif b is not None:  # MM:SS
        seconds = a_i * 60 + b_i
    else:  # minutes
        seconds = a_i * 60
    minutes = math.ceil(seconds / 60)
    if not 1 <= minutes <= 10**7:
        raise InvalidRequest("command", f"{option} {_shown(value)}: out of range")
    return minutes


def _path(value: str, option: str, cwd: str) -> str:
    if not value or any(c in value for c in "\n\r\0"):
        raise InvalidRequest("command", f"{option}: expected a file name without line breaks")
    return posixpath.normpath(posixpath.join(cwd, value))


# --- the translation --------------------------------------------------------------


def split_command(command: Any) -> list[str]:
    """The words of ``command``: a string (shell-like splitting) or a list of words."""
    if isinstance(command, str):
        check_text("command", command, MAX_COMMAND_CHARS)
        try:
            words = shlex.split(command, posix=True)
        except ValueError as e:
            raise InvalidRequest("command", f"cannot be split into words: {e}") from None
    elif isinstance(command, list) and all(isinstance(w, str) for w in command):
        words = list(command)
        for i, w in enumerate(words):
            check_text(f"command[{i}]", w, MAX_COMMAND_CHARS)
    else:
        raise InvalidRequest("command", "expected a string (an sbatch command line)")
    if words and posixpath.basename(words[0]) == "sbatch":
        words = words[1:]
    if not words:
        raise InvalidRequest("command", "names neither a script nor --wrap")
    return words


def translate(command: Any, env: Mapping[str, str], *, partition: str,
              home: str = "/tmp") -> StepCommand:  # noqa: S108 - a default working directory
    """Translate an sbatch command line into a StepCommand; refuse what is not supported."""
    words = split_command(command)
    values: dict[str, str | bool] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--":
            i += 1
            break
        if not word.startswith("-") or word == "-":
            break
        if word.startswith("--"):
            key, eq, inline = word.partition("=")
            has_inline = bool(eq)
        else:
            key, inline = word[:2], word[2:]
            has_inline = bool(inline)
        opt = OPTIONS.get(key)
        if opt is None:
            raise InvalidRequest("command", f"sbatch option {_shown(key)} is not supported "
                                            f"(supported: {SUPPORTED}; see docs/steps.md)")
        if opt.name in values:
            raise InvalidRequest("command", f"option --{opt.name} is given twice")
        if opt.value:
            if has_inline:
                raw = inline
            else:
                if i + 1 >= len(words):
                    raise InvalidRequest("command", f"option {key} needs a value")
                i += 1
                raw = words[i]
            values[opt.name] = substitute(raw, env, "command", quote=opt.name == "wrap")
        else:
            if has_inline:
                raise InvalidRequest("command", f"option {key} takes no value here "
                                                f"(got {_shown(inline)})")
            values[opt.name] = True
        i += 1
    rest = [substitute(w, env, "command") for w in words[i:]]

    cwd = home
    if "chdir" in values:
        cwd = _path(str(values["chdir"]), "--chdir", home)
    if "wrap" in values:
        if rest:
            raise InvalidRequest("command", "--wrap and a script cannot be given together "
                                            f"(found {_shown(rest[0])} after the options)")
        wrap = str(values["wrap"])
        if not wrap.strip():
            raise InvalidRequest("command", "--wrap is empty")
        argv: tuple[str, ...] = ("/bin/sh", "-c", wrap)
    else:
        if not rest:
            raise InvalidRequest("command", "names no script (give a script path or --wrap)")
        script = rest[0]
        if not script or any(c in script for c in "\n\r"):
            raise InvalidRequest("command", "the script path is empty or has a line break")
        if not script.startswith("/"):
            script = "./" + script if not script.startswith("./") else script
        argv = ("/bin/bash", "-c", RUN_SCRIPT, script, *rest[1:])

    partition_given = values.get("partition")
    if partition_given is not None and partition_given != partition:
        raise InvalidRequest("command", f"--partition {_shown(str(partition_given))}: steps run "
                                        f"on the compute partition {partition!r} only")
    for key in ("account", "qos"):
        if key in values and not NAME_WORD_RE.match(str(values[key])):
            raise InvalidRequest("command", f"--{key} {_shown(str(values[key]))}: expected a "
                                            "name of letters, digits, '_', '.', '-'")
    if "mem" in values and "mem-per-cpu" in values:
        raise InvalidRequest("command", "--mem and --mem-per-cpu cannot be given together")

    def num(key: str) -> int | None:
        return _count(str(values[key]), f"--{key}") if key in values else None

    return StepCommand(
        argv=argv,
        nodes=num("nodes"),
        tasks=num("ntasks"),
        tasks_per_node=num("ntasks-per-node"),
        cpus_per_task=num("cpus-per-task"),
        memory_per_node=parse_memory(str(values["mem"])) if "mem" in values else None,
        memory_per_cpu=(parse_memory(str(values["mem-per-cpu"]), "--mem-per-cpu")
                        if "mem-per-cpu" in values else None),
        time_limit=parse_time(str(values["time"])) if "time" in values else None,
        stdout=_path(str(values["output"]), "--output", cwd) if "output" in values else None,
        stderr=_path(str(values["error"]), "--error", cwd) if "error" in values else None,
        cwd=cwd,
        exclusive=bool(values.get("exclusive", False)),
        account=str(values["account"]) if "account" in values else None,
        qos=str(values["qos"]) if "qos" in values else None,
        job_name=str(values["job-name"]) if "job-name" in values else None,
    )


def describe_options() -> Sequence[str]:
    """The supported options, for documentation and error messages."""
    return sorted({o.name for o in OPTIONS.values()})
