"""Admission of queued reservations at a release: same outcome, fewer allocator calls.

``ResourceManager._admit_queued`` skips a queued reservation whose demand already
failed in the same pass (a pass only takes resources, so it would fail again). The
differential test drives it and the plain algorithm (every queued reservation tried,
as before) through the same random reserves, deletes and clock ticks, and compares
every reservation's state, placement and queue position after each step.
"""

from __future__ import annotations

import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wfm_orchestrator.allocator import NoCapacity
from wfm_orchestrator.config import parse_config
from wfm_orchestrator.errors import NotFound, RequestFailed
from wfm_orchestrator.model import parse_reserve
from wfm_orchestrator.resource_manager import ResourceManager, State
from wfm_orchestrator.store import Store

from ..conftest import SMALL_CONF


def plain_admit_queued(self, now):
    """The algorithm before the memo: try every queued reservation in order."""
    admitted = []
    backfill = self.config.queue_policy == "backfill"
    for rec in list(self._queue):
        try:
            self._take(rec, now)
        except NoCapacity:
            if backfill and now - self._queue[0].created < self.config.backfill_window:
                continue
            break
        self._queue.remove(rec)
        admitted.append(rec)
    return admitted


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def manager(tmp_path, name: str, policy: str, clock: Clock) -> ResourceManager:
    text = SMALL_CONF.format(state_db=tmp_path / f"{name}.db", queue_policy=policy)
    config = parse_config(text + "backfill_window = 10\n")
    return ResourceManager(config, Store(str(tmp_path / f"{name}.db")), clock=clock)


def request(rm: ResourceManager, name: str, cores: int, gb: int, servers: int,
            storage_gb: int = 1):
    return parse_reserve({"name": name, "user": "alice", "user_slurm_token": "t", "type": "GBF",
                          "servers": servers,
                          "attributes": {"cores": cores, "msize": gb * 1024,
                                         "gssize": servers * storage_gb * 1024,
                                         "mountpoint": "/m"}}, rm.config)


def state(rm: ResourceManager) -> dict:
    out = {}
    for name, (rec, position) in ((r.name, rm.snapshot(r.name)) for r in rm.live()):
        placement = tuple((p.server, tuple(p.core_list), p.msize, p.ssize)
                          for p in rec.placement or ())
        out[name] = (rec.state, placement, position)
    return out


def apply(rm: ResourceManager, op: tuple) -> str:
    try:
        if op[0] == "reserve":
            _, n, cores, gb, servers, storage_gb = op
            rec, ticket = rm.reserve(request(rm, f"r{n}", cores, gb, servers, storage_gb))
            ticket.wait()
            return rec.state.value
        if op[0] == "delete":
            return rm.release(f"r{op[1]}")[0].state.value
        rm.clock.now += op[1]
        return "tick"
    except (RequestFailed, NotFound) as e:
        return type(e).__name__


operations = st.lists(st.one_of(
    st.tuples(st.just("reserve"), st.integers(0, 15), st.integers(1, 8), st.integers(1, 16),
              st.integers(1, 3), st.sampled_from([1, 400, 700])),
    st.tuples(st.just("delete"), st.integers(0, 15)),
    st.tuples(st.just("tick"), st.sampled_from([1, 6, 11])),
), max_size=40)


@pytest.mark.parametrize("policy", ["fifo", "backfill"])
@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_admission_matches_trying_every_queued_reservation(tmp_path_factory, policy, ops):
    tmp_path = tmp_path_factory.mktemp("admit")
    ours, plain = manager(tmp_path, "ours", policy, Clock()), manager(tmp_path, "plain", policy,
                                                                      Clock())
    plain._admit_queued = types.MethodType(plain_admit_queued, plain)
    try:
        for op in ops:
            assert apply(ours, op) == apply(plain, op), op
            assert state(ours) == state(plain), op
    finally:
        ours.store.close()
        plain.store.close()


def test_backfill_release_tries_each_distinct_demand_once(backfill):
    """2,000 queued copies of a demand that does not fit: one allocator call for them all."""
    rm, _ = backfill
    for i in range(4):
        rm.reserve(request(rm, f"full{i}", 8, 16, 1))
    for i in range(2000):
        rm.reserve(request(rm, f"big{i}", 8, 16, 2))  # two whole datanodes: never now
    rm.reserve(request(rm, "small", 1, 1, 1))
    assert rm.snapshot("small")[0].state == State.QUEUED
    calls = []
    take = rm._take

    def counted(rec, now):
        calls.append(rec.name)
        return take(rec, now)

    rm._take = counted
    rm.release("full0")  # one datanode free: big still cannot fit, small can
    assert rm.snapshot("small")[0].state == State.FREE
    assert calls == ["big0", "small"]  # big tried once, not 2,000 times
    assert [r.name for r in rm._queue][:2] == ["big0", "big1"]
    assert len(rm._queue) == 2000


def test_backfill_window_counts_from_the_new_head_once_the_old_one_is_admitted(backfill):
    """Old head admitted, next one young: a later reservation that fits still passes it."""
    rm, clock = backfill
    for i in range(4):
        rm.reserve(request(rm, f"full{i}", 6, 8, 1))  # 2 cores, 8 GB left on each
    rm.reserve(request(rm, "old", 8, 8, 1))  # needs a whole datanode's cores
    clock.now += 11  # old waited longer than the window (10 s)
    rm.reserve(request(rm, "young", 8, 8, 2))  # two whole datanodes
    rm.reserve(request(rm, "late", 2, 1, 1))  # fits the 2 cores left... behind old
    assert rm.snapshot("late")[0].state == State.QUEUED  # old blocks: waited > window
    rm.release("full0")  # dn freed: old takes it; young cannot fit
    assert rm.snapshot("old")[0].state == State.FREE
    assert rm.snapshot("young")[0].state == State.QUEUED
    # young is the head now, and has waited 0 s: late may pass it
    assert rm.snapshot("late")[0].state == State.FREE


def test_demands_that_differ_only_in_storage_are_tried_separately(backfill):
    """The memo is per whole demand: a smaller ssize behind a failed larger one still fits."""
    rm, _ = backfill
    for i in range(4):
        rm.reserve(request(rm, f"full{i}", 7, 1, 1, storage_gb=600))  # 1 core left each
    node = rm.reserve(request(rm, "store", 1, 1, 1, storage_gb=400))[0].placement[0].server
    rm.reserve(request(rm, "wide", 2, 1, 1, storage_gb=900))
    rm.reserve(request(rm, "narrow", 2, 1, 1, storage_gb=300))
    assert {rm.snapshot(n)[0].state for n in ("wide", "narrow")} == {State.QUEUED}
    on_node = next(r.name for r in rm.live()
                   if r.name.startswith("full") and r.placement[0].server == node)
    rm.release(on_node)  # that node: 7 cores, 600 GB free
    assert rm.snapshot("wide")[0].state == State.QUEUED
    assert rm.snapshot("narrow")[0].state == State.FREE
