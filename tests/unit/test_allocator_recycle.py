"""The compiled allocator refills result lists nobody references any more (see
docs/allocator.md, "Recycled results"): results must stay exactly the
reference's, and a result anybody still holds must never change."""

# Seeded pseudo-random workloads, not cryptography.
# ruff: noqa: S311

from __future__ import annotations

import gc
import random

from wfm_orchestrator.allocator import Datanode, Placement, _compiled, reference
from wfm_orchestrator.errors import NoCapacity


def cluster(n=6):
    return [
        Datanode(f"dn{i}", cores=range(i * 3, 40 + i * 5), msize=100_000, ssize=1_000_000)
        for i in range(n)
    ]


def both():
    return _compiled.Allocator(cluster()), reference.Allocator(cluster())


def test_dropped_results_are_refilled_with_the_right_values():
    """Pairs whose results are dropped at once (the case recycling serves),
    with varying servers and core counts (core lists grow and shrink)."""
    fast, ref = both()
    rnd = random.Random(7)
    for k in range(3000):
        name = f"r{k % 5}"
        servers, cores = rnd.randint(1, 3), rnd.choice([0, 1, 2, 7, 30, 40])
        msize, ssize = rnd.randint(0, 50_000), rnd.randint(0, 400_000)
        try:
            got = fast.reserve(name, servers, cores, msize, ssize)
        except NoCapacity as e:
            got = ("no", str(e))
        try:
            want = ref.reserve(name, servers, cores, msize, ssize)
        except NoCapacity as e:
            want = ("no", str(e))
        assert got == want
        del got, want
        if name in ref:
            assert fast.release(name) == ref.release(name)
        for d in fast.datanodes:
            assert fast.free(d) == ref.free(d)
        assert fast._check() == 0


def test_held_results_never_change():
    fast, ref = both()
    kept = []
    for k in range(200):
        r = fast.reserve(f"r{k}", 1 + k % 2, k % 9, 10 * k, 20 * k)
        snapshot = [Placement(p.server, list(p.core_list), p.msize, p.ssize) for p in r]
        back = fast.release(f"r{k}")
        assert back is r
        if k % 3 == 0:
            kept.append((r, snapshot))  # the list, held by the caller
        elif k % 3 == 1:
            kept.append((r[0], snapshot[:1]))  # only a Placement of it
        else:
            kept.append((r[0].core_list, [snapshot[0].core_list]))  # only a core list
        del r, back
    for obj, snapshot in kept:
        if isinstance(obj, Placement):
            assert [obj] == snapshot
        elif obj and isinstance(obj[0], Placement):
            assert obj == snapshot
        else:
            assert [obj] == snapshot


def test_reservation_copies_and_restore_keep_their_values():
    fast, ref = both()
    r = fast.reserve("a", 2, 3, 10, 10)
    copy = fast.reservation("a")
    fast.release("a")
    del r
    fast.reserve("b", 2, 5, 20, 20)
    assert [p.core_list for p in copy] == [[0, 1, 2], [3, 4, 5]]
    assert copy[0].msize == 10
    fast.release("b")
    fast.restore("c", copy)
    ref.restore("c", copy)
    del copy
    assert fast.release("c") == ref.release("c")
    assert fast.reserve("d", 1, 4, 1, 1) == ref.reserve("d", 1, 4, 1, 1)


class Finalized:
    """An object a caller put into a core list; its finalizer calls the allocator."""

    calls: list = []

    def __init__(self, alloc):
        self.alloc = alloc

    def __del__(self):
        # Runs only once the refilled result is complete: the allocator is usable.
        Finalized.calls.append(self.alloc.reserve(f"del{len(Finalized.calls)}", 1, 1, 1, 1))


def test_foreign_objects_in_a_dropped_result_are_freed_after_the_refill():
    fast, ref = both()
    r = fast.reserve("a", 1, 2, 1, 1)
    fast.release("a")
    r[0].core_list.append(Finalized(fast))  # a caller changing a released result
    r[0].core_list.extend(["x", 1.5])
    del r
    got = fast.reserve("b", 1, 4, 1, 1)
    gc.collect()
    assert got == ref.reserve("b", 1, 4, 1, 1)
    assert len(Finalized.calls) == 1
    assert Finalized.calls[0][0].core_list == [4]
    assert fast._check() == 0


def test_changed_results_are_not_refilled():
    fast, _ = both()
    r = fast.reserve("a", 1, 2, 1, 1)
    fast.release("a")
    r.append("not a placement")
    del r
    assert fast.reserve("b", 1, 2, 1, 1) == [Placement("dn0", [0, 1], 1, 1)]
