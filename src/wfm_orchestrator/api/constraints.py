"""What the server refuses with 400, said in JSON Schema for the OpenAPI document.

The document must let a client know every request the server would refuse, so that a
client generated from it never sends one (tests/unit/test_openapi.py checks it with
Schemathesis' positive-data check). The schemas here are built from the rules they state
(model.py, sbatch.py, steps/request.py, the configuration), not copied from them.

Where the server's rule cannot be said in OpenAPI 3.0's JSON Schema, the schema states a
stricter rule that implies it, and its description gives the full one:

* ``command`` of step/launch: ``sbatch`` with a few options and a script with plain
  arguments (docs/steps.md has the whole syntax);
* data mover elements: ``TIER:path/pattern`` from a tier other than the target (a bare
  pattern or an absolute path inside the user's directory of a tier is accepted too);
* ``command_env``: a string or a list of ``KEY=value`` items (an object is accepted too).

Three rules no JSON Schema of OpenAPI 3.0 states are only described: the service names of a
step are distinct, so are its data mover names, and so are its ``command_env`` variables.
A user's account must exist on the orchestrator's host with a uid of at least
``min_user_uid``: the document excludes root, nobody and the ``slurm_user`` by name; the
site's accounts are its own.
"""

from __future__ import annotations

import re
from typing import Any

from ..config import Config
from ..model import JOB_SCOPED_RE, MAX_CORES, MAX_MB, MAX_SERVERS, MAX_TOKEN, SHORT_RE
from ..sbatch import DENIED_ENV_RE, MAX_COMMAND_CHARS
from ..steps.request import HINTS, MAX_ELEMENTS, TRIGGERS

# model.check_name and check_user: no '..', said without a look-ahead (not every
# generator or validator of the document reads one).
NAME_PATTERN = r"^[A-Za-z0-9_]([A-Za-z0-9_-]|\.[A-Za-z0-9_-])*\.?$"
USER_PATTERN = r"^[A-Za-z_]([A-Za-z0-9_-]|\.[A-Za-z0-9_-])*\.?$"
NAME = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": NAME_PATTERN}
USER_NAME = {"type": "string", "minLength": 1, "maxLength": 32, "pattern": USER_PATTERN}

# What Python's str.strip() removes (the server strips before it checks for blank text);
# every such character is below U+3001.
_SPACES = "".join(chr(c) for c in range(0x3001) if chr(c).isspace())


def text(max_length: int, blank: bool = True) -> dict[str, Any]:
    """A string without NUL; not blank (something left after strip()) unless ``blank``.

    Said with searches and ``not`` rather than one anchored pattern: Schemathesis builds
    the longest string an anchored pattern allows character by character (seconds).
    """
    schema = {"type": "string", "maxLength": max_length, "not": {"pattern": r"\x00"}}
    if not blank:
        schema["pattern"] = f"[^\\x00{_SPACES}]"  # a character that strip() keeps
    return schema


# model._size_mb: MB as an integer, or a size with a unit (size.parse_size) of at most
# 1 EiB: six digits below P, three with P (999999T and 999P are less than 1024P).
_FRACTION = r"(\.[0-9]{1,6})?"
SIZE_TEXT = (rf"^ *([0-9]{{1,6}}{_FRACTION} *([KMGTkmgt](iB|B)?|B)?"
             rf"|[0-9]{{1,3}}{_FRACTION} *[Pp](iB|B)?) *$")
SIZE = {"oneOf": [{"type": "integer", "minimum": 0, "maximum": MAX_MB},
                  {"type": "string", "pattern": SIZE_TEXT,
                   "description": "a size with a unit, binary multiples: 500MB, 2GiB, 1.5T"}]}
MOUNTPOINT = {"type": "string", "maxLength": 4096, "pattern": "^/",
              "not": {"pattern": r"[\n\r\x00]"}, "description": "an absolute path"}
TARGETS = {"description": "a file pattern or a non-empty list of patterns",
           "oneOf": [text(4096, blank=False),
                     {"type": "array", "minItems": 1, "items": text(4096, blank=False)}]}


def user(config: Config | None) -> dict[str, Any]:
    """A user who may own reservations and steps (accounts.py)."""
    refused = ["root", "nobody", *([config.slurm_user] if config is not None else [])]
    return {**USER_NAME, "not": {"enum": sorted(set(refused))},
            "description": "an existing account of the orchestrator's host with a uid of at "
                           "least min_user_uid (root, nobody and the slurm_user are refused)"}


def _one_of(values: list[str]) -> dict[str, Any]:
    return {"type": "string", "enum": values} if values else {"type": "string", "not": {}}


def locations(config: Config | None) -> dict[str, Any]:
    """``location``: configured location names (none or [] is no constraint)."""
    if config is None:
        return {"type": "array", "nullable": True, "items": {"type": "string"}}
    names = list(config.locations)
    return ({"type": "array", "nullable": True, "items": _one_of(names)} if names
            else {"type": "array", "nullable": True, "maxItems": 0})


def _service_forms(config: Config | None, common: dict[str, Any], required: list[str],
                   types: list[str] | None = None) -> dict[str, Any]:
    """A reserve body (model.parse_reserve) with ``common`` fields: one form per kind of
    type, so that the exclusive and required attributes of each are said; ``types`` (all
    by default) are those the request may name."""
    allowed = types if types is not None else ["NFS", "GBF", "DASI", "SBB"]
    cores = {"type": "integer", "minimum": 0, "maximum": MAX_CORES}
    fields = {**common, "servers": {"type": "integer", "minimum": 1, "maximum": MAX_SERVERS,
                                    "default": 1},
              "location": locations(config)}

    def form(kinds: list[str], attributes: dict[str, Any], needed: list[str]
             ) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": False,
                "required": [*required, "type", "attributes"],
                "properties": {**fields, "type": {"type": "string", "enum": kinds},
                               "attributes": {"type": "object", "additionalProperties": False,
                                              "required": needed,
                                              "properties": attributes}}}

    forms = []
    sized = [t for t in ("NFS", "GBF", "DASI") if t in allowed]
    if sized:
        forms.append(form(sized, {"cores": cores, "msize": SIZE, "gssize": SIZE,
                                  "mountpoint": MOUNTPOINT, "targets": TARGETS},
                          ["gssize", "mountpoint"]))
    flavors = list(config.flavors) if config is not None else None
    if "SBB" in allowed and (flavors is None or flavors):
        flavor = {"type": "string"} if flavors is None else {"type": "string", "enum": flavors}
        forms.append(form(["SBB"], {"flavor": flavor, "targets": TARGETS,
                                    "mountpoint": MOUNTPOINT}, ["flavor", "targets"]))
    return {"description": "NFS, GBF and DASI: gssize and mountpoint, per-server cores and "
                           "msize (no flavor, no ssize); SBB: a flavor and targets (no sizes)",
            "oneOf": forms or [{"not": {}}]}


def reserve_request(config: Config | None) -> dict[str, Any]:
    """The reserve body: a name not of the job-scoped form <user>_job<N>[_<short>], which
    only that job may reserve (POST server/jobservice)."""
    name = {**NAME, "not": {"pattern": JOB_SCOPED_RE.pattern},
            "description": "not of the form <user>_job<N>[_<short>] (a job-scoped service's)"}
    return _service_forms(config, {"name": name, "user": user(config),
                                   "user_slurm_token": text(MAX_TOKEN)},
                          ["name", "user", "user_slurm_token"])


def job_service_request(config: Config | None) -> dict[str, Any]:
    """A job's service (job_services.JobServices.reserve): a reserve body without name,
    user and token, with an optional short name. Types the orchestrator starts itself are
    started with the SlurmUser's token: refused unless impersonate_users = yes."""
    types = None
    if config is not None and config.slurmrestd_url and not config.impersonate_users:
        types = [t for t in ("NFS", "GBF", "DASI", "SBB") if t not in config.service_types]
    short = {"type": "string", "pattern": SHORT_RE.pattern,
             "description": "the short name: the service is <user>_job<N>_<name>"}
    return _service_forms(config, {"name": short}, [], types)


# sbatch.translate: a few options, each at most once, then the script and plain words.
_COUNT = r"[1-9][0-9]{0,4}"
COMMAND = (rf"^sbatch (-N {_COUNT} )?(-n {_COUNT} )?(-c {_COUNT} )?(-t [1-9][0-9]{{0,5}} )?"
           r"(--exclusive )?[A-Za-z0-9_][A-Za-z0-9_./-]{0,255}( [A-Za-z0-9_./=:,+-]{1,256}){0,32}$")
_VARIABLE = r"[A-Za-z_][A-Za-z0-9_]{0,127}=[A-Za-z0-9_./:,+-]*"
# sbatch.DENIED_ENV_RE, as a search for a denied name at the start of an item.
_DENIED = (r"(^| )(" + DENIED_ENV_RE.pattern.strip("^$()").replace(".*", "[A-Za-z0-9_]*")
           + ")=")


def command_env() -> dict[str, Any]:
    item = {"type": "string", "pattern": rf"^{_VARIABLE}$", "not": {"pattern": _DENIED}}
    return {"description": "KEY=value items with distinct keys: a string (items separated by "
                           "spaces) or a list of items; an object {KEY: value} is accepted "
                           "too. Names such as LD_*, BASH_ENV, SLURM_*, WFM_* are refused "
                           "(docs/steps.md)",
            "oneOf": [{"type": "string", "pattern": rf"^({_VARIABLE}( {_VARIABLE})*)?$",
                       "not": {"pattern": _DENIED}},
                      {"type": "array", "maxItems": 512, "items": item}]}


# steps/request.parse_element, of an element TIER:pattern: printable, relative, with a
# segment other than '.', and no '..' segment (a rest of dots and slashes alone is
# refused here, though '...' is a name). Searches and ``not``, as text() says why.
_NOT_AN_ELEMENT = r"[\x00-\x1f\x7f]|[:/]\.\.(/|$)|^[^:]*:[./]*$"


def datamover(config: Config | None) -> dict[str, Any]:
    """One data mover: one form per source tier, so that its elements all come from one
    tier, which is not its target."""
    base = {"name": NAME, "trigger": {"type": "string", "enum": list(TRIGGERS)}}
    required = ["name", "trigger", "target", "operation", "elements"]
    if config is None:
        return {"type": "object", "additionalProperties": False, "required": required,
                "properties": {**base, "target": {"type": "string"},
                               "operation": {"type": "string"},
                               "elements": {"type": "array", "minItems": 1,
                                            "items": {"type": "string"}}}}
    tiers = list(config.target_tier_list)
    operation = _one_of(list(config.datamover_operation_list))
    forms = [{"type": "object", "additionalProperties": False, "required": required,
              "properties": {**base, "operation": operation,
                             "target": {"type": "string",
                                        "enum": [t for t in tiers if t != source]},
                             "elements": {"type": "array", "minItems": 1,
                                          "maxItems": MAX_ELEMENTS,
                                          "items": {"type": "string", "maxLength": 4096,
                                                    "pattern": f"^{re.escape(source)}:[^/]",
                                                    "not": {"pattern": _NOT_AN_ELEMENT}}}}}
             for source in tiers if len(tiers) > 1]
    return {"description": "elements: TIER:path patterns, all from one tier other than the "
                           "target (a bare pattern, read from the default source tier, or an "
                           "absolute path in the user's directory of a tier is accepted too: "
                           "docs/steps.md)",
            "oneOf": forms or [{"not": {}}]}


def step_launch_request(config: Config | None) -> dict[str, Any]:
    """The step/launch body (steps/request.parse_launch)."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "user", "command"],
        "description": "the services of a step have distinct names, and so have its data "
                       "movers (across its services)",
        "properties": {
            "name": NAME,
            "user": user(config),
            "location": locations(config),
            "command_env": command_env(),
            "command": {"type": "string", "maxLength": MAX_COMMAND_CHARS, "pattern": COMMAND,
                        "description": "an sbatch command line: here sbatch with -N, -n, -c, "
                                       "-t (minutes), --exclusive, then a script and its "
                                       "arguments; docs/steps.md gives every option "
                                       "accepted"},
            "services": {"type": "array", "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {
                    "name": NAME,
                    "hint": {"type": "string", "enum": list(HINTS), "default": "RW"},
                    "datamovers": {"type": "array", "items": datamover(config)},
                },
            }},
        },
    }
