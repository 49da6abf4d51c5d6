"""The allocator's rules, checked on both implementations (compiled and reference)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import wfm_orchestrator.allocator as allocator_pkg
from wfm_orchestrator.allocator import Datanode, Free, Placement, _compiled
from wfm_orchestrator.errors import (
    DuplicateReservation,
    InvalidDemand,
    NoCapacity,
    UnknownDatanode,
    UnknownReservation,
)

# The `Allocator` fixture (tests/unit/conftest.py) is each implementation in turn.


def dn(name, cores=16, msize=1000, ssize=10_000, location=None):
    return Datanode(name, cores=range(cores), msize=msize, ssize=ssize, location=location)


def two_locations(Allocator, policy="pack"):  # noqa: N803
    return Allocator(
        [
            dn("a1", location="loc1"),
            dn("b1", location="loc2"),
            dn("a2", location="loc1"),
            dn("b2", location="loc2"),
            dn("c1", location="loc3"),
            dn("x"),
        ],
        policy=policy,
        neighbours={"loc1": ["loc2"]},
    )


# --- which implementation is loaded ------------------------------------------


def _implementation_in_subprocess(env_value):
    env = {k: v for k, v in os.environ.items() if k != "WFM_ALLOCATOR"}
    if env_value is not None:
        env["WFM_ALLOCATOR"] = env_value
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    code = "import wfm_orchestrator.allocator as a; print(a.IMPLEMENTATION, a.Allocator.__module__)"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def test_compiled_implementation_is_loaded_by_default():
    """Without WFM_ALLOCATOR the package uses the compiled allocator (no silent fallback)."""
    done = _implementation_in_subprocess(None)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["compiled", "wfm_orchestrator.allocator._compiled"]
    if "WFM_ALLOCATOR" not in os.environ:
        assert allocator_pkg.IMPLEMENTATION == "compiled"
        assert allocator_pkg.Allocator is _compiled.Allocator


def test_env_var_selects_the_reference_implementation():
    """WFM_ALLOCATOR=reference selects the pure-Python allocator."""
    done = _implementation_in_subprocess("reference")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["reference", "wfm_orchestrator.allocator.reference"]


def test_unknown_env_value_fails_the_import():
    """A misspelt WFM_ALLOCATOR is an import error, not a silent default."""
    done = _implementation_in_subprocess("fast")
    assert done.returncode != 0
    assert "WFM_ALLOCATOR" in done.stderr


def test_both_implementations_return_the_same_record_classes(Allocator):
    """Placement and Free come from reference.py whichever implementation runs."""
    a = Allocator([dn("d")])
    p = a.reserve("r", 1, 1, 1, 1)[0]
    assert type(p) is Placement and type(a.free("d")) is Free


def test_version_changes_when_and_only_when_free_does(Allocator):
    """version(dn) moves with each reserve, release and restore touching dn, and with
    nothing else: a reader may keep what it made of free(dn) while it is the same."""
    a = Allocator([dn("d1"), dn("d2")])
    seen = {d: a.version(d) for d in ("d1", "d2")}

    def moved() -> set[str]:
        now = {d: a.version(d) for d in ("d1", "d2")}
        changed = {d for d in now if now[d] != seen[d]}
        seen.update(now)
        return changed

    [p] = a.reserve("r", 1, 2, 10, 10)
    assert moved() == {p.server}
    a.free("d1"), a.capacity("d2"), a.reservation("r")
    with pytest.raises(NoCapacity):
        a.reserve("big", 3, 1, 1, 1)
    assert moved() == set()
    a.release("r")
    assert moved() == {p.server}
    a.restore("again", [p])
    assert moved() == {p.server}
    with pytest.raises(UnknownDatanode):
        a.version("d9")


# --- reserve -------------------------------------------------------------------


def test_reserve_places_each_server_on_a_distinct_datanode(Allocator):
    """servers=3 gives three placements on three different datanodes."""
    a = Allocator([dn("d1"), dn("d2"), dn("d3"), dn("d4")])
    placement = a.reserve("r", servers=3, cores=2, msize=10, ssize=20)
    assert len({p.server for p in placement}) == 3
    assert all(p.msize == 10 and p.ssize == 20 and len(p.core_list) == 2 for p in placement)


def test_reserve_gives_the_lowest_free_core_ids_ascending(Allocator):
    """Core ids are the lowest free ones, listed ascending."""
    a = Allocator([Datanode("d", cores=[70, 3, 64, 9, 1], msize=10, ssize=10)])
    assert a.reserve("r1", 1, 2, 0, 0)[0].core_list == [1, 3]
    assert a.reserve("r2", 1, 2, 0, 0)[0].core_list == [9, 64]
    a.release("r1")
    assert a.reserve("r3", 1, 3, 0, 0)[0].core_list == [1, 3, 70]


def test_zero_cores_gives_an_empty_core_list(Allocator):
    """cores=0 means no binding: an empty core list, nothing taken."""
    a = Allocator([dn("d", cores=0)])
    assert a.reserve("r", 1, 0, 5, 5) == [Placement("d", [], 5, 5)]


def test_release_returns_exactly_what_reserve_took(Allocator):
    """release gives back (and returns) the placements reserve returned."""
    a = Allocator([dn("d1"), dn("d2")])
    taken = a.reserve("r", 2, 3, 100, 200)
    assert a.reservation("r") == taken
    assert a.release("r") == taken
    assert "r" not in a and len(a) == 0
    assert a.free("d1") == a.capacity("d1")


def test_reserve_never_over_commits(Allocator):
    """Once a datanode is full, a further reserve raises NoCapacity."""
    a = Allocator([dn("d", cores=4, msize=100)])
    a.reserve("r1", 1, 2, 60, 0)
    with pytest.raises(NoCapacity) as e:
        a.reserve("r2", 1, 2, 60, 0)
    assert e.value.ever is False
    assert a.free("d") == Free([2, 3], 40, 10_000)


def test_failed_reserve_changes_nothing(Allocator):
    """All or nothing: a reserve that cannot place every server leaves no trace."""
    a = Allocator([dn("d1"), dn("d2", cores=2)])
    before = [a.free(n) for n in a.datanodes]
    with pytest.raises(NoCapacity):
        a.reserve("r", 2, 4, 1, 1)
    assert [a.free(n) for n in a.datanodes] == before
    assert "r" not in a


def test_demand_that_can_never_fit_says_why(Allocator):
    """ever=True and the message names the shortfall and the candidates."""
    a = Allocator([dn("dn1"), dn("dn2")])
    with pytest.raises(NoCapacity) as e:
        a.reserve("r", 2, 32, 1, 1)
    assert e.value.ever is True
    assert "needs 2 servers with 32 cores each" in str(e.value)
    assert "(dn1, dn2) have at most 16 cores" in str(e.value)


def test_more_servers_than_candidates_can_never_fit(Allocator):
    """Asking for more servers than candidate datanodes is NoCapacity(ever=True)."""
    a = Allocator([dn("dn1"), dn("dn2")])
    with pytest.raises(NoCapacity) as e:
        a.reserve("r", 3, 1, 1, 1)
    assert e.value.ever and "only 2 datanodes" in str(e.value)


def test_demand_that_fits_later_is_not_ever(Allocator):
    """A demand blocked by current reservations has ever=False."""
    a = Allocator([dn("d")])
    a.reserve("r1", 1, 16, 1, 1)
    with pytest.raises(NoCapacity) as e:
        a.reserve("r2", 1, 1, 1, 1)
    assert e.value.ever is False and "free now" in str(e.value)


# --- candidates and locations ------------------------------------------------------


def test_locations_take_their_own_datanodes_first(Allocator):
    """With locations, the datanodes of those locations are chosen before neighbours."""
    a = two_locations(Allocator)
    assert {p.server for p in a.reserve("r", 2, 1, 1, 1, locations=["loc1"])} == {"a1", "a2"}


def test_neighbour_locations_fill_in_when_the_first_tier_is_short(Allocator):
    """Servers the requested locations cannot hold go to their neighbour locations."""
    a = two_locations(Allocator)
    servers = [p.server for p in a.reserve("r", 3, 1, 1, 1, locations=["loc1"])]
    assert servers[:2] == ["a1", "a2"] and servers[2] in {"b1", "b2"}


def test_locations_never_reach_beyond_neighbours(Allocator):
    """Datanodes of other locations or of none are not candidates when locations are given."""
    a = two_locations(Allocator)
    with pytest.raises(NoCapacity) as e:
        a.reserve("r", 5, 1, 1, 1, locations=["loc1"])
    assert e.value.ever


def test_datanode_without_location_is_used_only_without_locations(Allocator):
    """A datanode whose location is None is a candidate only when no locations are given."""
    a = Allocator([dn("x"), dn("a", location="loc1")])
    assert a.reserve("r1", 2, 1, 1, 1, locations=None)
    a2 = Allocator([dn("x"), dn("a", location="loc1")])
    with pytest.raises(NoCapacity):
        a2.reserve("r1", 2, 1, 1, 1, locations=["loc1"])
    assert a2.reserve("r2", 2, 1, 1, 1, locations=[])  # empty list = anywhere


def test_unknown_location_is_invalid(Allocator):
    """An unknown location name raises InvalidDemand naming it and the known ones."""
    a = two_locations(Allocator)
    with pytest.raises(InvalidDemand) as e:
        a.reserve("r", 1, 1, 1, 1, locations=["loc9"])
    assert e.value.field == "locations" and e.value.value == "loc9"
    assert "loc1" in e.value.valid


def test_locations_must_be_a_list_not_a_string(Allocator):
    """locations='loc1' is rejected instead of being read as letters."""
    with pytest.raises(InvalidDemand):
        two_locations(Allocator).reserve("r", 1, 1, 1, 1, locations="loc1")


# --- policies and ties ---------------------------------------------------------------


def test_pack_prefers_a_partly_used_datanode(Allocator):
    """pack puts a new reservation on a datanode already in use rather than an empty one."""
    a = Allocator([dn("d1"), dn("d2"), dn("d3")], policy="pack")
    a.reserve("r1", 1, 1, 1, 1)  # d1 (tie: inventory order)
    a.reserve(
        "r2",
        1,
        1,
        1,
        1,
    )  # d1 again: partly used wins
    assert {p.server for name in ("r1", "r2") for p in a.reservation(name)} == {"d1"}


def test_pack_prefers_the_fullest_datanode_that_fits(Allocator):
    """pack is best fit: of two partly used datanodes, the one with less left over wins."""
    a = Allocator([dn("d1"), dn("d2")], policy="pack")
    a.restore("old1", [Placement("d1", [0], 100, 100)])
    a.restore("old2", [Placement("d2", [0, 1, 2, 3], 500, 100)])
    assert a.reserve("r", 1, 1, 1, 1)[0].server == "d2"


def test_spread_prefers_the_least_loaded_datanode(Allocator):
    """spread puts each new reservation on the emptiest datanode."""
    a = Allocator([dn("d1"), dn("d2"), dn("d3")], policy="spread")
    servers = [a.reserve(f"r{k}", 1, 1, 1, 1)[0].server for k in range(3)]
    assert servers == ["d1", "d2", "d3"]


def test_ties_go_to_the_first_datanode_of_the_inventory(Allocator):
    """Equally ranked datanodes are taken in inventory order."""
    a = Allocator([dn("z"), dn("a"), dn("m")])
    assert [p.server for p in a.reserve("r", 2, 1, 1, 1)] == ["z", "a"]


def test_unknown_policy_is_invalid(Allocator):
    """Only 'pack' and 'spread' are policies."""
    with pytest.raises(InvalidDemand) as e:
        Allocator([dn("d")], policy="random")
    assert e.value.field == "policy"


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("servers", 0),
        ("servers", -1),
        ("servers", True),
        ("servers", 1.0),
        ("cores", -1),
        ("cores", "2"),
        ("cores", False),
        ("msize", 2**62),
        ("msize", None),
        ("ssize", -5),
        ("ssize", 2**70),
    ],
)
def test_bad_sizes_raise_invalid_demand_with_the_value(Allocator, field, value):
    """Negative, non-int, bool and >= 2**62 sizes (and servers < 1) are InvalidDemand."""
    a = Allocator([dn("d")])
    args = {"servers": 1, "cores": 1, "msize": 1, "ssize": 1, field: value}
    with pytest.raises(InvalidDemand) as e:
        a.reserve("r", **args)
    assert e.value.field == field and e.value.value is value and e.value.valid
    assert len(a) == 0


@pytest.mark.parametrize("name", ["", None, 7])
def test_reservation_name_must_be_a_non_empty_string(Allocator, name):
    """An empty or non-string name is InvalidDemand('name', ...)."""
    with pytest.raises(InvalidDemand) as e:
        Allocator([dn("d")]).reserve(name, 1, 1, 1, 1)
    assert e.value.field == "name"


def test_duplicate_reservation_name_is_refused(Allocator):
    """A held name cannot be reserved again."""
    a = Allocator([dn("d")])
    a.reserve("r", 1, 1, 1, 1)
    with pytest.raises(DuplicateReservation):
        a.reserve("r", 1, 1, 1, 1)


def test_unknown_reservation_is_reported(Allocator):
    """release and reservation of an unknown name raise UnknownReservation (a KeyError)."""
    a = Allocator([dn("d")])
    with pytest.raises(UnknownReservation):
        a.release("nope")
    with pytest.raises(KeyError):
        a.reservation("nope")


def test_unknown_datanode_is_reported(Allocator):
    """free and capacity of an unknown datanode raise UnknownDatanode."""
    a = Allocator([dn("d")])
    with pytest.raises(UnknownDatanode):
        a.free("e")
    with pytest.raises(UnknownDatanode):
        a.capacity("e")


@pytest.mark.parametrize(
    "cores, bad", [([1, 2, 2], 2), ([0, 1024], 1024), ([-1], -1), ([True], True), ("0-3", "0-3")]
)
def test_datanode_core_ids_must_be_distinct_and_in_range(cores, bad):
    """A Datanode's core ids are distinct ints 0..1023."""
    with pytest.raises(InvalidDemand) as e:
        Datanode("d", cores=cores, msize=1, ssize=1)
    assert e.value.value == bad


def test_duplicate_datanode_names_are_refused(Allocator):
    """Two datanodes with one name are InvalidDemand."""
    with pytest.raises(InvalidDemand) as e:
        Allocator([dn("d"), dn("d")])
    assert e.value.value == "d"


def test_datanode_sizes_are_checked():
    """A Datanode's memory and storage are ints 0..2**62-1."""
    with pytest.raises(InvalidDemand):
        Datanode("d", cores=[0], msize=-1, ssize=1)
    with pytest.raises(InvalidDemand):
        Datanode("d", cores=[0], msize=1, ssize=2**62)


# --- restore -------------------------------------------------------------------------------


def test_restore_retakes_an_exact_placement(Allocator):
    """restore holds exactly the placements given, cores included."""
    a = Allocator([dn("d1"), dn("d2")])
    placements = [Placement("d2", [5, 7], 10, 20), Placement("d1", [], 1, 2)]
    assert a.restore("r", placements) == placements
    assert a.reservation("r") == placements
    assert a.free("d2").core_list == [0, 1, 2, 3, 4, 6, *range(8, 16)]
    assert a.release("r") == placements
    assert a.free("d2") == a.capacity("d2")


def test_restore_refuses_taken_cores_and_changes_nothing(Allocator):
    """Restoring onto busy cores raises NoCapacity and leaves the state unchanged."""
    a = Allocator([dn("d1"), dn("d2")])
    a.reserve("r1", 1, 2, 1, 1)  # d1 cores 0, 1
    before = [a.free(n) for n in a.datanodes]
    with pytest.raises(NoCapacity):
        a.restore("r2", [Placement("d2", [0], 1, 1), Placement("d1", [1], 1, 1)])
    assert [a.free(n) for n in a.datanodes] == before and "r2" not in a


def test_restore_refuses_over_commit(Allocator):
    """Restoring more memory than is free raises NoCapacity; beyond capacity, ever=True."""
    a = Allocator([dn("d", msize=100)])
    a.reserve("r1", 1, 0, 60, 0)
    with pytest.raises(NoCapacity) as e:
        a.restore("r2", [Placement("d", [], 50, 0)])
    assert e.value.ever is False
    with pytest.raises(NoCapacity) as e:
        a.restore("r3", [Placement("d", [], 500, 0)])
    assert e.value.ever is True


def test_restore_checks_its_input(Allocator):
    """Unknown datanodes, foreign core ids and repeated servers are refused."""
    a = Allocator([dn("d1", cores=4), dn("d2")])
    with pytest.raises(UnknownDatanode):
        a.restore("r", [Placement("nope", [], 1, 1)])
    with pytest.raises(InvalidDemand):
        a.restore("r", [Placement("d1", [9], 1, 1)])
    with pytest.raises(InvalidDemand):
        a.restore("r", [Placement("d1", [0], 1, 1), Placement("d1", [1], 1, 1)])
    with pytest.raises(InvalidDemand):
        a.restore("r", [])
    with pytest.raises(InvalidDemand):
        a.restore("r", [Placement("d1", [0], -1, 1)])
    a.reserve("r", 1, 1, 1, 1)
    with pytest.raises(DuplicateReservation):
        a.restore("r", [Placement("d2", [0], 1, 1)])


def test_restore_takes_records_in_any_form_alike(Allocator):
    """Plain tuples or lists, core ids out of order: held as Placements with ascending core
    lists; a repeated core id is refused and nothing is taken (the compiled restore's fast
    path takes only the store's own form and leaves the rest to the shared checks)."""
    a = Allocator([dn("d1"), dn("d2")])
    held = a.restore("r", (["d2", (7, 5), 10, 20], ("d1", [3], 1, 2)))
    assert held == [Placement("d2", [5, 7], 10, 20), Placement("d1", [3], 1, 2)]
    assert all(type(p) is Placement and type(p.core_list) is list for p in held)
    assert a.reservation("r") == held
    before = [a.free(n) for n in a.datanodes]
    with pytest.raises(InvalidDemand):
        a.restore("r2", [("d1", [4, 4], 1, 1)])
    with pytest.raises(InvalidDemand):
        a.restore("r2", [("d1", [-1], 1, 1)])
    assert [a.free(n) for n in a.datanodes] == before and "r2" not in a


@pytest.mark.parametrize("policy", ["pack", "spread"])
def test_restores_inside_restoring_leave_the_allocator_as_one_by_one(Allocator, policy):
    """A start restores inside ``restoring()`` (the compiled allocator orders its datanodes
    once, at its end): the same free capacity, versions that changed, the C index
    consistent, and the next reserves placed as after restores one by one; a restore
    refused inside it changes nothing either."""
    records = [(f"r{i}", [Placement(f"{'ab'[i % 2]}{1 + i % 2}", [i], 10 * i, 100 * i)])
               for i in range(1, 9)] + [("s", [Placement("c1", [0, 1, 2], 5, 5),
                                               Placement("x", [3], 1, 1)])]
    one_by_one = two_locations(Allocator, policy)
    for name, placements in records:
        one_by_one.restore(name, placements)
    at_start = two_locations(Allocator, policy)
    versions = {n: at_start.version(n) for n in at_start.datanodes}
    with at_start.restoring() as restoring:
        assert restoring is at_start
        for name, placements in records:
            at_start.restore(name, placements)
        with pytest.raises(NoCapacity):
            at_start.restore("taken", [Placement("x", [3], 1, 1)])
    assert [at_start.free(n) for n in at_start.datanodes] == [
        one_by_one.free(n) for n in one_by_one.datanodes]
    assert all(at_start.version(n) != versions[n] for n in ("a1", "b2", "c1", "x"))
    if hasattr(at_start, "_check"):
        assert at_start._check() == 0
    for i, (servers, cores) in enumerate([(1, 4), (2, 8), (1, 6), (3, 2)]):
        assert at_start.reserve(f"n{i}", servers, cores, 1, 1) == one_by_one.reserve(
            f"n{i}", servers, cores, 1, 1)


# --- queries -----------------------------------------------------------------------------------


def test_can_fit_ever_considers_empty_candidates(Allocator):
    """can_fit_ever answers for empty candidates, whatever is reserved now."""
    a = two_locations(Allocator)
    a.reserve("r", 2, 16, 1, 1, locations=["loc1"])
    assert a.can_fit_ever(2, 16, 1, 1, locations=["loc1"])
    assert a.can_fit_ever(4, 16, 1, 1, locations=["loc1"])  # with neighbours
    assert not a.can_fit_ever(5, 16, 1, 1, locations=["loc1"])
    assert not a.can_fit_ever(1, 17, 1, 1)
    with pytest.raises(InvalidDemand):
        a.can_fit_ever(0, 1, 1, 1)


def test_inventory_queries(Allocator):
    """datanodes, capacity, free, len and `in` describe the inventory and the holds."""
    a = Allocator([dn("d1", cores=2), dn("d2")])
    assert a.datanodes == ("d1", "d2")
    assert a.capacity("d1") == Free([0, 1], 1000, 10_000)
    a.reserve("r", 1, 1, 10, 10)
    assert "r" in a and "s" not in a and len(a) == 1
    assert a.free("d1") == Free([1], 990, 9_990)


def test_empty_inventory_can_never_fit(Allocator):
    """With no datanodes every demand is NoCapacity(ever=True)."""
    with pytest.raises(NoCapacity) as e:
        Allocator([]).reserve("r", 1, 0, 0, 0)
    assert e.value.ever
