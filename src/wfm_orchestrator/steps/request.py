"""A step's request: ``POST step/launch`` validated into records (pure).

:func:`parse_launch` raises InvalidRequest naming the field and what would be
valid; data mover elements are patterns relative to a tier's root.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..errors import InvalidRequest
from ..model import check_name, check_user, parse_locations
from ..sbatch import StepCommand, parse_command_env, translate

TRIGGERS = ("step_start", "step_stop")
HINTS = ("RO", "RW", "WO")
MAX_ELEMENTS = 1024


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


def kind_of(v: Any) -> str:
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


def parse_element(value: Any, field: str, target: str, config: Config,
                  user: str) -> tuple[str, str]:
    """One element -> (source tier, pattern relative to the user's directory of it,
    ``<root>/<user>/``, where the mover resolves it)."""
    if not isinstance(value, str):
        raise InvalidRequest(field, f"expected a string, got {kind_of(value)}")
    if not value or len(value) > 4096 or any(ord(c) < 32 or c == "\x7f" for c in value):
        raise InvalidRequest(field, "expected 1 to 4096 printable characters")
    source: str | None = None
    pattern = value
    head, sep, tail = value.partition(":")
    if sep and head in config.target_tier_list:
        source, pattern = head, tail
    if pattern.startswith("/"):
        # An absolute path: it must lie in a configured tier's root (textually), in the
        # user's directory there (the mover reads and writes nowhere else).
        norm = posixpath.normpath(pattern)
        for tier in config.tiers.values():
            root = tier.root.rstrip("/") or "/"
            if norm == root or norm.startswith(root + "/"):
                if source is not None and source != tier.name:
                    raise InvalidRequest(field, f"{value!r}: the path is in tier {tier.name}, "
                                                f"not {source}")
                mine = posixpath.join(root, user)
                if norm != mine and not norm.startswith(mine + "/"):
                    raise InvalidRequest(field, f"{value!r} is not in {user}'s directory of "
                                                f"tier {tier.name} ({mine}/): give the path "
                                                f"there, or {tier.name}:path relative to it")
                source, pattern = tier.name, norm[len(mine):].lstrip("/")
                break
        else:
            raise InvalidRequest(field, f"{value!r} is outside every tier root (elements are "
                                        "patterns relative to a tier root: [TIER:]path/glob)")
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    if not parts:
        raise InvalidRequest(field, f"{value!r} names a whole tier root (or your directory "
                                    "of it); name files or directories in it")
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


def parse_datamover(d: Any, field: str, service: str, config: Config, user: str) -> DataMover:
    if not isinstance(d, dict):
        raise InvalidRequest(field, f"expected an object, got {kind_of(d)}")
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
    parsed = [parse_element(e, f"{field}.elements[{i}]", target, config, user)
              for i, e in enumerate(elements)]
    sources = {s for s, _ in parsed}
    if len(sources) > 1:
        raise InvalidRequest(f"{field}.elements", f"elements come from several tiers "
                                                  f"({', '.join(sorted(sources))}): one data "
                                                  "mover moves from one source tier")
    return DataMover(name, service, trigger, operation, parsed[0][0], target,
                     tuple(p for _, p in parsed))


def parse_launch(body: Any, config: Config,
                 home: Callable[[str], str]) -> tuple[StepRequest, StepCommand]:
    """Validate a step/launch body; raise InvalidRequest naming the field.

    ``home(user)`` gives the user's home directory (an account lookup: I/O, passed in,
    accounts.home_of in the service)."""
    if not isinstance(body, dict):
        raise InvalidRequest("body", f"expected a JSON object, got {kind_of(body)}")
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
        raise InvalidRequest("services", f"expected a list, got {kind_of(services_in)}")
    services: list[ServiceUse] = []
    dm_names: set[str] = set()
    for i, s in enumerate(services_in):
        f = f"services[{i}]"
        if not isinstance(s, dict):
            raise InvalidRequest(f, f"expected an object, got {kind_of(s)}")
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
            raise InvalidRequest(f"{f}.datamovers", f"expected a list, got {kind_of(movers_in)}")
        movers = []
        for j, d in enumerate(movers_in):
            dm = parse_datamover(d, f"{f}.datamovers[{j}]", sname, config, user)
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
