"""The datanode allocator, in plain Python: the specification.

This module is written to be read. It defines the records (``Datanode``,
``Placement``, ``Free``), the input checks and the error messages, which
the compiled twin (``_compiled.pyx`` over ``csrc/``) imports unchanged, and
the reference ``Allocator``, whose placement decisions the compiled one
must reproduce exactly for the same sequence of calls.

The rules, in the order ``reserve`` applies them:

1. **Checks.** ``name`` is a non-empty string; ``servers`` >= 1 and
   ``cores``, ``msize``, ``ssize`` >= 0 are ints (not bools) below 2**62;
   ``locations`` is None or a list of known location names. Then the name
   must not be held already (``DuplicateReservation``).
2. **Candidates.** Without locations: every datanode. With locations: tier 1
   is the datanodes of those locations, tier 2 the datanodes of their
   neighbour locations (as given to the constructor, not transitive) that
   are not in tier 1. A datanode without a location is a candidate only
   when no locations are given.
3. **Order.** Within a tier, candidates are ranked by ``(level, inventory
   index)``, where ``level`` depends on the policy (``order_level``):
   ``pack`` puts the fullest datanode first (least capacity left idle;
   empty datanodes always come last), ``spread`` the emptiest first.
   Ties go to the datanode listed first in the inventory.
4. **Choice.** The first ``servers`` datanodes of tier 1 that can hold the
   per-server demand, then, if tier 1 has too few, the first of tier 2.
   Each chosen datanode gives its lowest free core ids.
5. **All or nothing.** If fewer than ``servers`` fit, nothing changes and
   ``NoCapacity`` is raised; with ``ever=True`` if the demand would not
   fit even with every candidate empty.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ..config import MAX_CORE_ID
from ..errors import (
    DuplicateReservation,
    InvalidDemand,
    NoCapacity,
    UnknownDatanode,
    UnknownReservation,
)

POLICIES = ("pack", "spread")
# Sizes are MB and must stay inside C's int64 with room for sums.
MAX_SIZE = 1 << 62
# A datanode's fill level per dimension is free * LEVELS // capacity: an
# integer in 0..LEVELS (LEVELS when nothing of that dimension is used, or
# when the datanode has none of it). See order_level.
LEVELS = 1024
TIGHT_WEIGHT = 4 * LEVELS  # > 3 * LEVELS: the tightest dimension decides first
MAX_LEVEL = LEVELS * TIGHT_WEIGHT + 3 * LEVELS
# The compiled index keeps (level << 32 | index) in 64 bits.
MAX_DATANODES = 1 << 31


# --- records ----------------------------------------------------------------


class Placement(NamedTuple):
    """What one server of a reservation holds on one datanode."""

    server: str
    core_list: list[int]  # ascending; treat as read-only
    msize: int  # MB
    ssize: int  # MB


class Free(NamedTuple):
    """Free (or total) resources of one datanode."""

    core_list: list[int]  # ascending
    msize: int  # MB
    ssize: int  # MB


@dataclass(frozen=True)
class Datanode:
    """One datanode of the inventory: its core ids, memory and storage (MB)."""

    name: str
    cores: tuple[int, ...]  # distinct ids in 0..MAX_CORE_ID, stored ascending
    msize: int
    ssize: int
    location: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidDemand("name", self.name, "a non-empty string naming the datanode")
        object.__setattr__(self, "cores", check_core_ids(f"{self.name}.cores", self.cores))
        object.__setattr__(self, "msize", check_size(f"{self.name}.msize", self.msize))
        object.__setattr__(self, "ssize", check_size(f"{self.name}.ssize", self.ssize))
        if self.location is not None and (not isinstance(self.location, str) or not self.location):
            raise InvalidDemand(f"{self.name}.location", self.location, "None or a location name")


# --- input checks (shared with the compiled implementation) -----------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_size(field: str, value: object, minimum: int = 0) -> int:
    """Return ``value`` as an int if ``minimum <= value < 2**62``, else raise InvalidDemand."""
    if not _is_int(value) or not minimum <= value < MAX_SIZE:  # type: ignore[operator]
        raise InvalidDemand(field, value, f"an int from {minimum} to 2**62-1")
    return int(value)  # type: ignore[call-overload]


def check_name(name: object) -> str:
    """A reservation name is a non-empty string."""
    if not isinstance(name, str) or not name:
        raise InvalidDemand("name", name, "a non-empty string")
    return name


def check_demand(servers: object, cores: object, msize: object, ssize: object):
    """(servers, cores, msize, ssize) as ints, or InvalidDemand for the first bad one."""
    return (
        check_size("servers", servers, 1),
        check_size("cores", cores),
        check_size("msize", msize),
        check_size("ssize", ssize),
    )


def check_core_ids(field: str, cores: object) -> tuple[int, ...]:
    """Distinct int core ids in 0..MAX_CORE_ID, returned ascending."""
    # The datanodes of one wfm.conf record share their core tuple: checked once (10,000
    # datanodes of 64 cores were 0.15 s of every start). By identity: a tuple never
    # changes, and an equal one may hold other types (True == 1).
    hit = _CHECKED.get(id(cores))
    if hit is not None and hit[0] is cores:
        return hit[1]
    ids = _check_core_ids(field, cores)
    if type(cores) is tuple:
        if len(_CHECKED) >= 256:
            _CHECKED.clear()
        _CHECKED[id(cores)] = (cores, ids)
    return ids


_CHECKED: dict[int, tuple[object, tuple[int, ...]]] = {}


def _check_core_ids(field: str, cores: object) -> tuple[int, ...]:
    if isinstance(cores, str | bytes) or not isinstance(cores, Iterable):
        raise InvalidDemand(field, cores, f"an iterable of distinct core ids 0..{MAX_CORE_ID}")
    ids = list(cores)
    for core in ids:
        if not _is_int(core) or not 0 <= core <= MAX_CORE_ID:
            raise InvalidDemand(field, core, f"a core id from 0 to {MAX_CORE_ID}")
    if len(set(ids)) != len(ids):
        dup = next(c for c in ids if ids.count(c) > 1)
        raise InvalidDemand(field, dup, "distinct core ids (this one is repeated)")
    return tuple(sorted(int(c) for c in ids))


def check_policy(policy: object) -> str:
    if policy not in POLICIES:
        raise InvalidDemand("policy", policy, "one of " + ", ".join(POLICIES))
    return policy  # type: ignore[return-value]


def fill_level(free: int, capacity: int) -> int:
    """How much of one dimension is free, in 0..LEVELS (LEVELS = all of it, or none exists)."""
    return LEVELS if capacity == 0 else free * LEVELS // capacity


def order_level(policy: str, free_cores: int, free_m: int, free_s: int, dn: Datanode) -> int:
    """The rank of a datanode under ``policy``: lower is chosen first.

    ``free_level`` orders datanodes by the fill level of their tightest
    dimension (the one with the smallest free fraction), then by the sum of
    the three fill levels. ``pack`` takes the lowest first: best fit, the
    fullest datanode that fits (an empty datanode has MAX_LEVEL and only an
    empty one does, so partly used datanodes are always preferred).
    ``spread`` takes the highest first: the least loaded.
    """
    levels = (
        fill_level(free_cores, len(dn.cores)),
        fill_level(free_m, dn.msize),
        fill_level(free_s, dn.ssize),
    )
    free = min(levels) * TIGHT_WEIGHT + sum(levels)
    return free if policy == "pack" else MAX_LEVEL - free


# --- the inventory (shared) -------------------------------------------------


@dataclass(frozen=True)
class Candidates:
    """The datanodes a request may use: ``tiers`` of inventory indices, best tier first."""

    tiers: tuple[tuple[int, ...], ...]  # each tier in inventory order
    location_tiers: tuple[tuple[str, ...], ...] | None  # None: every datanode
    summary: str  # "dn1, dn2" (for messages)
    indices: tuple[int, ...]  # every tier, in order


class Inventory:
    """The checked, immutable inventory: datanodes, locations and neighbours."""

    def __init__(self, datanodes: Iterable[Datanode], neighbours: Mapping | None = None):
        if isinstance(datanodes, str | bytes) or not isinstance(datanodes, Iterable):
            raise InvalidDemand("datanodes", datanodes, "an iterable of Datanode records")
        self.datanodes: tuple[Datanode, ...] = tuple(datanodes)
        self.index_of: dict[str, int] = {}
        for i, dn in enumerate(self.datanodes):
            if not isinstance(dn, Datanode):
                raise InvalidDemand("datanodes", dn, "Datanode records")
            if dn.name in self.index_of:
                raise InvalidDemand("datanodes", dn.name, "distinct datanode names")
            self.index_of[dn.name] = i
        if len(self.datanodes) >= MAX_DATANODES:
            raise InvalidDemand("datanodes", len(self.datanodes), f"fewer than {MAX_DATANODES}")
        self.names: tuple[str, ...] = tuple(dn.name for dn in self.datanodes)
        self.neighbours: dict[str, tuple[str, ...]] = self._check_neighbours(neighbours)
        # Location names in order of first appearance (datanodes, then neighbours).
        known: dict[str, None] = {}
        for dn in self.datanodes:
            if dn.location is not None:
                known[dn.location] = None
        for loc, near in self.neighbours.items():
            known[loc] = None
            known.update(dict.fromkeys(near))
        self.locations: tuple[str, ...] = tuple(known)
        self._cache: dict[tuple[str, ...], Candidates] = {}

    @staticmethod
    def _check_neighbours(neighbours: object) -> dict[str, tuple[str, ...]]:
        if neighbours is None:
            return {}
        if not isinstance(neighbours, Mapping):
            raise InvalidDemand("neighbours", neighbours, "a mapping location -> list of locations")
        out: dict[str, tuple[str, ...]] = {}
        for loc, near in neighbours.items():
            if not isinstance(loc, str) or not loc:
                raise InvalidDemand("neighbours", loc, "location names as keys")
            if isinstance(near, str | bytes) or not isinstance(near, Iterable):
                raise InvalidDemand(f"neighbours[{loc!r}]", near, "a list of location names")
            near = tuple(near)
            for n in near:
                if not isinstance(n, str) or not n:
                    raise InvalidDemand(f"neighbours[{loc!r}]", n, "location names")
            out[loc] = tuple(dict.fromkeys(near))
        return out

    def check_locations(self, locations: object) -> tuple[str, ...]:
        """Return the requested locations without repeats (``()`` for none)."""
        if locations is None:
            return ()
        if isinstance(locations, str | bytes) or not isinstance(locations, Sequence):
            raise InvalidDemand("locations", locations, "None or a list of location names")
        for loc in locations:
            if loc not in self.locations or not isinstance(loc, str):
                valid = ", ".join(self.locations) if self.locations else "none (no locations)"
                raise InvalidDemand("locations", loc, "a known location: " + valid)
        return tuple(dict.fromkeys(locations))

    def candidates(self, locations: tuple[str, ...]) -> Candidates:
        """The candidate tiers for checked ``locations`` (cached)."""
        found = self._cache.get(locations)
        if found is not None:
            return found
        if not locations:
            loc_tiers = None
            tiers: tuple[tuple[int, ...], ...] = (tuple(range(len(self.datanodes))),)
        else:
            first = set(locations)
            second: dict[str, None] = {}
            for loc in locations:
                for near in self.neighbours.get(loc, ()):
                    if near not in first:
                        second[near] = None
            loc_tiers = (locations, tuple(second))
            tiers = tuple(
                tuple(i for i, dn in enumerate(self.datanodes) if dn.location in set(tier))
                for tier in loc_tiers
            )
        indices = tuple(i for tier in tiers for i in tier)
        found = Candidates(tiers, loc_tiers, summarize(self.names[i] for i in indices), indices)
        if len(self._cache) >= 1024:
            self._cache.clear()
        self._cache[locations] = found
        return found

    def check_placements(self, placements: object) -> list[tuple[int, tuple[int, ...], int, int]]:
        """Check records to ``restore``: [(datanode index, core ids, msize, ssize)].

        Raises InvalidDemand for malformed records, core ids the datanode does
        not have, or a datanode named twice; UnknownDatanode for unknown names.
        """
        if isinstance(placements, str | bytes) or not isinstance(placements, Iterable):
            raise InvalidDemand("placements", placements, "a non-empty list of Placement")
        out = []
        seen = set()
        for p in placements:
            try:
                server, core_list, msize, ssize = p
            except (TypeError, ValueError):
                raise InvalidDemand(
                    "placements", p, "Placement(server, core_list, msize, ssize)"
                ) from None
            if not isinstance(server, str):
                raise InvalidDemand("placements.server", server, "a datanode name")
            if server not in self.index_of:
                raise UnknownDatanode(server)
            if server in seen:
                raise InvalidDemand("placements.server", server, "distinct datanodes")
            seen.add(server)
            dn = self.datanodes[self.index_of[server]]
            cores = check_core_ids("placements.core_list", core_list)
            for c in cores:
                if c not in dn.cores:
                    raise InvalidDemand("placements.core_list", c, f"a core id of {server}")
            out.append(
                (
                    self.index_of[server],
                    cores,
                    check_size("placements.msize", msize),
                    check_size("placements.ssize", ssize),
                )
            )
        if not out:
            raise InvalidDemand("placements", placements, "a non-empty list of Placement")
        return out

    def datanode(self, name: object) -> int:
        """Index of a datanode by name, or UnknownDatanode."""
        try:
            return self.index_of[name]  # type: ignore[index]
        except (KeyError, TypeError):
            raise UnknownDatanode(name) from None  # type: ignore[arg-type]


# --- messages (shared) ------------------------------------------------------


def summarize(names: Iterable[str], limit: int = 6) -> str:
    names = list(names)
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", ... ({len(names)} datanodes)"


def _per_server(cores: int, msize: int, ssize: int) -> str:
    return f"{cores} cores, {msize} MB memory and {ssize} MB storage"


def explain_never_fits(inv: Inventory, cand: Candidates, servers, cores, msize, ssize) -> str:
    """Why the demand cannot fit on the candidates even if they were all empty."""
    dns = [inv.datanodes[i] for i in cand.indices]
    if not dns:
        where = "" if cand.location_tiers is None else " in " + ", ".join(cand.location_tiers[0])
        return f"needs {servers} servers; there are no candidate datanodes{where}"
    if len(dns) < servers:
        return (
            f"needs {servers} servers; the candidates ({cand.summary}) "
            f"are only {len(dns)} datanodes"
        )
    for need, unit, have in (
        (cores, "cores", [len(d.cores) for d in dns]),
        (msize, "MB memory", [d.msize for d in dns]),
        (ssize, "MB storage", [d.ssize for d in dns]),
    ):
        enough = sum(h >= need for h in have)
        if enough < servers:
            return (
                f"needs {servers} servers with {need} {unit} each; the candidates "
                f"({cand.summary}) have at most {max(have)} {unit}"
                + (f" and only {enough} of them that many" if enough else "")
            )
    enough = sum(len(d.cores) >= cores and d.msize >= msize and d.ssize >= ssize for d in dns)
    return (
        f"needs {servers} servers with {_per_server(cores, msize, ssize)} each; "
        f"only {enough} of the candidates ({cand.summary}) have all of it"
    )


def explain_no_room(cand: Candidates, servers, cores, msize, ssize, found: int) -> str:
    """Why the demand does not fit now (it would on empty candidates)."""
    return (
        f"needs {servers} servers with {_per_server(cores, msize, ssize)} each; "
        f"only {found} of the candidates ({cand.summary}) have that free now"
    )


def restore_conflict(name, dn: Datanode, msize, ssize, taken, free_m, free_s) -> NoCapacity:
    """The error for a ``restore`` that would over-commit ``dn`` or take busy cores."""
    return NoCapacity(
        f"cannot restore {name!r} on {dn.name}: "
        + (f"cores {list(taken)} are taken; " if taken else "")
        + f"it asks {msize} MB memory and {ssize} MB storage, "
        f"{free_m} MB and {free_s} MB are free",
        ever=msize > dn.msize or ssize > dn.ssize,
    )


def fits_ever(inv: Inventory, cand: Candidates, servers, cores, msize, ssize) -> bool:
    """Would the demand fit if every candidate datanode were empty?"""
    enough = 0
    for i in cand.indices:
        d = inv.datanodes[i]
        if len(d.cores) >= cores and d.msize >= msize and d.ssize >= ssize:
            enough += 1
            if enough >= servers:
                return True
    return False


# --- the reference allocator ------------------------------------------------


class _State:
    """The free resources of one datanode."""

    __slots__ = ("dn", "index", "cores", "msize", "ssize", "version")

    def __init__(self, dn: Datanode, index: int):
        self.dn = dn
        self.index = index
        self.cores: list[int] = list(dn.cores)  # free core ids, ascending
        self.msize = dn.msize
        self.ssize = dn.ssize
        self.version = 0  # changes each time the free resources do (Allocator.version)

    def fits(self, cores: int, msize: int, ssize: int) -> bool:
        return len(self.cores) >= cores and self.msize >= msize and self.ssize >= ssize

    def take(self, cores: int, msize: int, ssize: int) -> Placement:
        taken, self.cores = self.cores[:cores], self.cores[cores:]
        self.msize -= msize
        self.ssize -= ssize
        self.version += 1
        return Placement(self.dn.name, taken, msize, ssize)

    def give_back(self, p: Placement) -> None:
        self.cores = sorted(self.cores + list(p.core_list))
        self.msize += p.msize
        self.ssize += p.ssize
        self.version += 1


class Allocator:
    """Reserves slices of datanodes for named reservations (see the module docstring)."""

    def __init__(
        self,
        datanodes: Iterable[Datanode],
        policy: str = "pack",
        neighbours: Mapping[str, Iterable[str]] | None = None,
    ):
        self.policy = check_policy(policy)
        self._inv = Inventory(datanodes, neighbours)
        self._nodes = [_State(dn, i) for i, dn in enumerate(self._inv.datanodes)]
        self._held: dict[str, list[Placement]] = {}  # as returned by reserve

    # -- queries

    @property
    def datanodes(self) -> tuple[str, ...]:
        return self._inv.names

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._held

    def __len__(self) -> int:
        return len(self._held)

    def reservation(self, name: str) -> list[Placement]:
        if not isinstance(name, str) or name not in self._held:
            raise UnknownReservation(name)
        return list(self._held[name])

    def free(self, datanode: str) -> Free:
        s = self._nodes[self._inv.datanode(datanode)]
        return Free(list(s.cores), s.msize, s.ssize)

    def capacity(self, datanode: str) -> Free:
        dn = self._inv.datanodes[self._inv.datanode(datanode)]
        return Free(list(dn.cores), dn.msize, dn.ssize)

    def version(self, datanode: str) -> int:
        """A number that changes each time ``free(datanode)`` does (a reader keeps what it
        made of a datanode while it is the same; it may wrap, never within a reader's
        reach: 2**32 changes)."""
        return self._nodes[self._inv.datanode(datanode)].version

    def can_fit_ever(self, servers, cores, msize, ssize, locations=None) -> bool:
        servers, cores, msize, ssize = check_demand(servers, cores, msize, ssize)
        cand = self._inv.candidates(self._inv.check_locations(locations))
        return fits_ever(self._inv, cand, servers, cores, msize, ssize)

    # -- changes

    def reserve(self, name, servers, cores, msize, ssize, locations=None) -> list[Placement]:
        name = check_name(name)
        servers, cores, msize, ssize = check_demand(servers, cores, msize, ssize)
        cand = self._inv.candidates(self._inv.check_locations(locations))
        if name in self._held:
            raise DuplicateReservation(name)

        def rank(s: _State) -> tuple[int, int]:
            free_cores = len(s.cores)
            return (order_level(self.policy, free_cores, s.msize, s.ssize, s.dn), s.index)

        chosen: list[_State] = []
        for tier in cand.tiers:
            fitting = [self._nodes[i] for i in tier if self._nodes[i].fits(cores, msize, ssize)]
            fitting.sort(key=rank)
            chosen += fitting[: servers - len(chosen)]
        if len(chosen) < servers:
            if not fits_ever(self._inv, cand, servers, cores, msize, ssize):
                raise NoCapacity(
                    explain_never_fits(self._inv, cand, servers, cores, msize, ssize), ever=True
                )
            raise NoCapacity(explain_no_room(cand, servers, cores, msize, ssize, len(chosen)))
        placements = [s.take(cores, msize, ssize) for s in chosen]
        self._held[name] = placements
        return placements

    def release(self, name: str) -> list[Placement]:
        placements = self._held.pop(name, None) if isinstance(name, str) else None
        if placements is None:
            raise UnknownReservation(name)
        for p in placements:
            self._nodes[self._inv.index_of[p.server]].give_back(p)
        return placements

    def restoring(self) -> contextlib.AbstractContextManager[Allocator]:
        """The compiled allocator's context for a start's many ``restore`` calls (it
        orders the datanodes once at its end); nothing to defer here."""
        return contextlib.nullcontext(self)

    def restore(self, name, placements) -> list[Placement]:
        """Re-take exactly ``placements`` under ``name`` (rebuilding from the database)."""
        name = check_name(name)
        if name in self._held:
            raise DuplicateReservation(name)
        wanted = self._inv.check_placements(placements)
        for i, cores, msize, ssize in wanted:
            s = self._nodes[i]
            taken = [c for c in cores if c not in s.cores]
            if taken or msize > s.msize or ssize > s.ssize:
                raise restore_conflict(name, s.dn, msize, ssize, taken, s.msize, s.ssize)
        held = []
        for i, cores, msize, ssize in wanted:
            s = self._nodes[i]
            p = Placement(s.dn.name, list(cores), msize, ssize)
            s.cores = [c for c in s.cores if c not in cores]
            s.msize -= msize
            s.ssize -= ssize
            s.version += 1
            held.append(p)
        self._held[name] = held
        return held
