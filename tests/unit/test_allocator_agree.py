"""The compiled and the reference allocators agree on random operation sequences."""

# Seeded pseudo-random workloads, not cryptography.
# ruff: noqa: S311

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.strategies import allocator_operations, clusters
from wfm_orchestrator.allocator import Datanode, Placement, _compiled, reference
from wfm_orchestrator.errors import WfmError

# The `scan` fixture (tests/unit/conftest.py: both block scans of the C index) switches a
# process-wide setting once per test, not per example.
SETTINGS = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def outcome(call):
    """('ok', result) or ('error', type, message, ever) — what a caller can observe."""
    try:
        return ("ok", call())
    except WfmError as e:
        return ("error", type(e), str(e), getattr(e, "ever", None))


def apply(alloc, op, history):
    kind = op[0]
    if kind == "reserve":
        _, name, servers, cores, msize, ssize, locations = op
        return outcome(lambda: alloc.reserve(name, servers, cores, msize, ssize, locations))
    if kind == "release":
        return outcome(lambda: alloc.release(op[1]))
    if kind == "restore":
        _, name, source = op
        if isinstance(source, int):
            if not history:
                return ("skipped",)
            placements = history[source % len(history)]
        else:
            placements = [Placement(*p) for p in source]
        return outcome(lambda: alloc.restore(name, placements))
    if kind == "free":
        return outcome(lambda: alloc.free(op[1]))
    _, servers, cores, msize, ssize, locations = op
    return outcome(lambda: alloc.can_fit_ever(servers, cores, msize, ssize, locations))


def check_never_over_committed(alloc, datanodes):
    """Free + everything held == capacity on every datanode; no core held twice."""
    held = {dn.name: ([], 0, 0) for dn in datanodes}
    for name in list(alloc._held) if hasattr(alloc, "_held") else []:
        for p in alloc.reservation(name):
            cores, m, s = held[p.server]
            held[p.server] = (cores + p.core_list, m + p.msize, s + p.ssize)
    for dn in datanodes:
        free = alloc.free(dn.name)
        cores, m, s = held[dn.name]
        assert free.msize >= 0 and free.ssize >= 0
        assert free.msize + m == dn.msize and free.ssize + s == dn.ssize
        assert len(set(cores)) == len(cores)
        assert sorted(free.core_list + cores) == list(dn.cores)


# Blocks of the C index: the default size, and tiny ones so that small
# clusters exercise block splits, merges and groups of blocks.
BLOCKS = [None, 4]


def compiled(datanodes, policy, neighbours, block):
    fast = _compiled.Allocator(datanodes, policy=policy, neighbours=neighbours)
    if block is not None:
        fast._rebuild(block)
        assert fast._check() == 0
    return fast


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("policy", ["pack", "spread"])
@SETTINGS
@given(cluster=clusters(), ops=allocator_operations)
def test_compiled_and_reference_agree_on_every_operation(policy, block, scan, cluster, ops):
    """Same operations, same results and errors, and neither ever over-commits."""
    datanodes, neighbours = cluster
    ref = reference.Allocator(datanodes, policy=policy, neighbours=neighbours)
    fast = compiled(datanodes, policy, neighbours, block)
    history: list = []
    for op in ops:
        expected = apply(ref, op, history)
        got = apply(fast, op, history)
        assert got == expected, op
        if op[0] in ("reserve", "release") and expected[0] == "ok":
            history.append(expected[1])
        assert fast._check() == 0
        assert len(fast) == len(ref)
        for dn in datanodes:
            assert fast.free(dn.name) == ref.free(dn.name)
    check_never_over_committed(ref, datanodes)


@st.composite
def busy_clusters(draw):
    """Bigger, homogeneous-ish clusters to exercise the index at depth."""
    seed = draw(st.integers(0, 2**32 - 1))
    rnd = random.Random(seed)
    n = rnd.randint(20, 120)
    locs = [f"l{k}" for k in range(rnd.randint(1, 5))]
    datanodes = [
        reference.Datanode(
            f"dn{i}",
            cores=range(rnd.choice([8, 16, 64, 100])),
            msize=rnd.choice([1000, 4000, 5000]),
            ssize=rnd.choice([10**6, 3 * 10**6]),
            location=rnd.choice([*locs, None]),
        )
        for i in range(n)
    ]
    neighbours = {loc: rnd.sample(locs, k=min(2, len(locs))) for loc in locs}
    return datanodes, neighbours, locs, seed


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("policy", ["pack", "spread"])
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=busy_clusters())
def test_agree_on_long_random_workloads(policy, block, scan, case):
    """Hundreds of reserve/release calls on a 20-120 datanode cluster give identical placements."""
    datanodes, neighbours, locs, seed = case
    rnd = random.Random(seed)
    ref = reference.Allocator(datanodes, policy=policy, neighbours=neighbours)
    fast = compiled(datanodes, policy, neighbours, block)
    live: list[str] = []
    for k in range(400):
        if live and rnd.random() < 0.4:
            name = live.pop(rnd.randrange(len(live)))
            assert fast.release(name) == ref.release(name)
            continue
        name = f"r{k}"
        args = (
            name,
            rnd.randint(1, 3),
            rnd.randint(0, 40),
            rnd.randint(0, 2000),
            rnd.randint(0, 10**6),
            rnd.choice([None, [], [rnd.choice(locs)], rnd.sample(locs, k=min(2, len(locs)))]),
        )
        expected = outcome(lambda: ref.reserve(*args))  # noqa: B023
        got = outcome(lambda: fast.reserve(*args))  # noqa: B023
        assert got == expected, args
        if expected[0] == "ok":
            live.append(name)
        if k % 50 == 0:
            assert fast._check() == 0
    assert fast._check() == 0
    for dn in datanodes:
        assert fast.free(dn.name) == ref.free(dn.name)
    check_never_over_committed(ref, datanodes)


@pytest.mark.parametrize("block", [None, 8])
def test_agree_at_depth_on_a_big_cluster(block, scan):
    """2,000 datanodes in 7 locations, filled and churned: identical placements, sound index."""
    rnd = random.Random(2024)
    locs = [f"l{k}" for k in range(7)]
    datanodes = [
        reference.Datanode(
            f"dn{i}",
            cores=range(rnd.choice([16, 64, 128])),
            msize=rnd.choice([64_000, 256_000]),
            ssize=rnd.choice([10**6, 8 * 10**6]),
            location=rnd.choice([*locs, None]),
        )
        for i in range(2000)
    ]
    neighbours = {loc: rnd.sample(locs, k=2) for loc in locs}
    ref = reference.Allocator(datanodes, neighbours=neighbours)
    fast = compiled(datanodes, "pack", neighbours, block)
    live: list[str] = []
    for k in range(3000):
        if live and rnd.random() < (0.3 if k < 1500 else 0.55):
            name = live.pop(rnd.randrange(len(live)))
            assert fast.release(name) == ref.release(name)
            continue
        cores = rnd.randint(0, 64)
        args = (
            f"r{k}",
            rnd.choice([1, 1, 1, 2, 4]),
            cores,
            rnd.randint(0, 128_000),
            rnd.randint(0, 4 * 10**6),
            rnd.choice([None, None, [rnd.choice(locs)], rnd.sample(locs, k=3)]),
        )
        expected = outcome(lambda: ref.reserve(*args))  # noqa: B023
        got = outcome(lambda: fast.reserve(*args))  # noqa: B023
        assert got == expected, args
        if expected[0] == "ok":
            live.append(args[0])
        if k % 500 == 0:
            assert fast._check() == 0
    assert fast._check() == 0
    for dn in datanodes:
        assert fast.free(dn.name) == ref.free(dn.name)


@pytest.mark.parametrize("policy", ["pack", "spread"])
def test_agree_around_the_exact_fill_level_bounds(policy):
    """Fill levels of capacities at the edges of the compiled multiply-shift
    (1, 2, powers of two, just below and above 2**27) and beyond it."""
    caps = [1, 2, 3, 1024, 1023, 2**27 - 1, 2**27, 2**27 + 1, 2**40 + 7, 2**62 - 1, 0]
    rnd = random.Random(policy)
    datanodes = [
        Datanode(f"dn{i}", cores=range(rnd.choice([0, 1, 2, 3, 64])), msize=m, ssize=s)
        for i, (m, s) in enumerate((m, s) for m in caps for s in rnd.sample(caps, 3))
    ]
    fast = _compiled.Allocator(datanodes, policy=policy)
    ref = reference.Allocator(datanodes, policy=policy)
    held = []
    for k in range(4000):
        if held and rnd.random() < 0.45:
            name = held.pop(rnd.randrange(len(held)))
            assert fast.release(name) == ref.release(name)
            continue
        cap_m, cap_s = rnd.choice(caps), rnd.choice(caps)
        m = rnd.randint(0, cap_m // rnd.choice([1, 2, 3, 1000]))
        s = rnd.randint(0, cap_s // rnd.choice([1, 2, 3, 1000]))
        op = (f"r{k}", rnd.randint(1, 2), rnd.randint(0, 2), m, s)
        got = outcome(lambda op=op: fast.reserve(*op))
        want = outcome(lambda op=op: ref.reserve(*op))
        assert got == want
        if got[0] == "ok":
            held.append(op[0])
    for d in fast.datanodes:
        assert fast.free(d) == ref.free(d)
    assert fast._check() == 0
