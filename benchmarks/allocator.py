"""Allocator benchmarks (run on demand; not part of pytest).

    PYTHONPATH=src python3 benchmarks/allocator.py [throughput|packing|all] [--quick]

1. throughput: reserve+release pairs per second through the public Python
   API at 100, 1,000 and 10,000 datanodes filled to about 85% (memory, the
   bottleneck of the mix), compiled and reference side by side.
2. packing: on a generated workload (cores 1-32, 1-16 GB per core capped at
   a node, storage log-uniform 10 GB-2 TB; nodes 64 cores / 256 GB / 8 TB),
   for both policies: bottleneck utilisation at the first rejection against
   the capacity bound, and the rejection rate at 85% and 95% offered load
   (Poisson arrivals, exponential lifetimes).

Both implementations place identically (tests/unit/test_allocator_agree.py),
so the packing figures are computed with the compiled one.
"""

# Seeded pseudo-random workloads, not cryptography.
# ruff: noqa: S311

from __future__ import annotations

import argparse
import heapq
import math
import random
import time

from wfm_orchestrator.allocator import Datanode, _compiled, reference
from wfm_orchestrator.errors import NoCapacity

GB = 1024  # MB
NODE = (64, 256 * GB, 8 * 1024 * GB)  # cores, memory MB, storage MB
IMPLEMENTATIONS = {"compiled": _compiled.Allocator, "reference": reference.Allocator}


def cluster(n: int, locations: int = 0) -> list[Datanode]:
    cores, msize, ssize = NODE
    return [
        Datanode(
            f"dn{i}",
            range(cores),
            msize,
            ssize,
            location=f"loc{i % locations}" if locations else None,
        )
        for i in range(n)
    ]


def demand(rnd: random.Random) -> tuple[int, int, int]:
    """One server's (cores, msize, ssize) from the reference mix."""
    cores = rnd.randint(1, 32)
    msize = min(cores * rnd.randint(1, 16) * GB, NODE[1])
    ssize = int(math.exp(rnd.uniform(math.log(10 * GB), math.log(2048 * GB))))
    return cores, msize, ssize


def fill(alloc, fraction: float, rnd: random.Random, n: int) -> dict[str, list]:
    """Reserve random demands until `fraction` of the memory is used; returns what is held."""
    goal = fraction * n * NODE[1]
    used = 0
    held = {}
    misses = 0
    k = 0
    while used < goal and misses < 50:
        c, m, s = demand(rnd)
        try:
            held[f"fill{k}"] = alloc.reserve(f"fill{k}", 1, c, m, s)
            used += m
        except NoCapacity:
            misses += 1
        k += 1
    return held


# --- 1. throughput -------------------------------------------------------------------


def throughput(sizes=(100, 1000, 10_000), seconds: float = 1.5, repeats: int = 5) -> None:
    print("## reserve+release pairs/s through the Python API, ~85% memory fill\n")
    print(f"compiled: best and median of {repeats} runs of {seconds} s; reference: 1 run\n")
    print(
        "| datanodes | compiled best pairs/s | median | us/pair (best) "
        "| reference pairs/s | ratio | fill |"
    )
    print("|---|---|---|---|---|---|---|")
    best_us = {}
    for n in sizes:
        rnd = random.Random(n)
        fast = _compiled.Allocator(cluster(n))
        held = fill(fast, 0.85, rnd, n)
        ref = reference.Allocator(cluster(n))
        for name, placements in held.items():
            ref.restore(name, placements)  # same state, without the reference's O(N) fill
        fill_level = 1 - sum(fast.free(d).msize for d in fast.datanodes) / (n * NODE[1])
        work = [(f"bench{k}", *demand(rnd)) for k in range(4096)]
        rates = sorted(pairs_per_second(fast, work, seconds) for _ in range(repeats))
        ref_rate = pairs_per_second(ref, work[:256] if n > 1000 else work, seconds)
        best, median = rates[-1], rates[len(rates) // 2]
        best_us[n] = 1e6 / best
        print(
            f"| {n:,} | {best:,.0f} | {median:,.0f} | {1e6 / best:.2f} | "
            f"{ref_rate:,.0f} | {best / ref_rate:,.0f}x | {fill_level:.2f} |"
        )
    if 100 in best_us and 10_000 in best_us:
        cost = best_us[10_000] / best_us[100]
        print(f"\n100 -> 10,000 datanodes costs {cost:.2f}x per pair (best)")
    empty = pairs_per_second(_Empty(), work, seconds / 3)
    print(f"harness alone (two empty method calls per pair): {1e6 / empty:.2f} us/pair")


class _Empty:
    """The measuring loop's own cost: the same calls on methods that do nothing."""

    def reserve(self, name, servers, cores, msize, ssize, locations=None):
        return None

    def release(self, name):
        return None


def pairs_per_second(alloc, work, seconds: float) -> float:
    """Pairs of reserve(name, 1, c, m, s) + release(name) per second, for `seconds`.

    `work` holds (name, cores, msize, ssize) with distinct names; a pair whose
    reserve raises NoCapacity counts (its release is not called). The clock
    is read once per pass over `work`, not per pair.
    """
    reserve, release = alloc.reserve, alloc.release
    pairs = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for name, c, m, s in work:
            try:
                reserve(name, 1, c, m, s)
                release(name)
            except NoCapacity:
                pass
        pairs += len(work)
        if time.perf_counter() > deadline:
            return pairs / (time.perf_counter() - start)


# --- 2. packing quality --------------------------------------------------------------------


def first_rejection(policy: str, n: int, seed: int) -> float:
    """Bottleneck utilisation (max over dimensions of placed / capacity) at the first rejection."""
    rnd = random.Random(seed)
    alloc = _compiled.Allocator(cluster(n), policy=policy)
    placed = [0, 0, 0]
    k = 0
    while True:
        c, m, s = demand(rnd)
        try:
            alloc.reserve(f"r{k}", 1, c, m, s)
        except NoCapacity:
            return max(placed[d] / (n * NODE[d]) for d in range(3))
        placed[0] += c
        placed[1] += m
        placed[2] += s
        k += 1


def rejection_rate(policy: str, n: int, load: float, seed: int, arrivals: int) -> float:
    """Rejected / offered at `load` offered memory load, after a warm-up of `arrivals` // 4."""
    rnd = random.Random(seed)
    mean_m = sum(demand(random.Random(seed + 1 + i))[1] for i in range(20_000)) / 20_000
    rate = load * n * NODE[1] / mean_m  # arrivals per unit time; mean lifetime 1
    alloc = _compiled.Allocator(cluster(n), policy=policy)
    ends: list[tuple[float, str]] = []
    now = 0.0
    warmup = arrivals // 4
    rejected = offered = 0
    for k in range(arrivals + warmup):
        now += rnd.expovariate(rate)
        while ends and ends[0][0] <= now:
            alloc.release(heapq.heappop(ends)[1])
        c, m, s = demand(rnd)
        try:
            alloc.reserve(f"r{k}", 1, c, m, s)
            heapq.heappush(ends, (now + rnd.expovariate(1.0), f"r{k}"))
            ok = True
        except NoCapacity:
            ok = False
        if k >= warmup:
            offered += 1
            rejected += not ok
    return rejected / offered


def packing(quick: bool = False) -> None:
    seeds = range(3 if quick else 5)
    print("\n## packing quality (reference mix; memory is the bottleneck)\n")
    print(
        "| policy | bottleneck use at first rejection N=200 | N=1,000 "
        "| rejections at 85% load (N=1,000) | at 95% |"
    )
    print("|---|---|---|---|---|")
    arrivals = 40_000 if quick else 150_000
    for policy in ("pack", "spread"):
        first = {
            n: sum(first_rejection(policy, n, s) for s in seeds) / len(seeds) for n in (200, 1000)
        }
        rej = {
            load: sum(rejection_rate(policy, 1000, load, s, arrivals) for s in seeds[:2]) / 2
            for load in (0.85, 0.95)
        }
        print(
            f"| {policy} | {first[200]:.3f} | {first[1000]:.3f} | "
            f"{rej[0.85]:.2%} | {rej[0.95]:.2%} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="all", choices=["throughput", "packing", "all"])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and arrivals")
    args = parser.parse_args()
    if args.what in ("throughput", "all"):
        throughput(seconds=0.5 if args.quick else 1.5, repeats=1 if args.quick else 5)
    if args.what in ("packing", "all"):
        packing(quick=args.quick)


if __name__ == "__main__":
    main()
