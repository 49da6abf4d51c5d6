"""Full garbage collections on the event loop's schedule (http/collector.py)."""

from __future__ import annotations

import gc
import threading
import weakref

import falcon

from wfm_orchestrator.http import collector
from wfm_orchestrator.http.collector import FullCollections
from wfm_orchestrator.http.server import create_server

from ..poll import poll


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def _old_cycle(collect) -> weakref.ref:
    """A cycle that became garbage after reaching the oldest generation."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    collect(1)  # still reachable: moved on to the oldest generation
    return weakref.ref(a)


def test_start_turns_off_automatic_full_collections_and_stop_restores_them():
    before = gc.get_threshold()
    collections = FullCollections()
    collections.start()
    try:
        young, middle, full = gc.get_threshold()
        assert (young, middle) == before[:2]
        assert full >= 1 << 30
    finally:
        collections.stop()
    assert gc.get_threshold() == before


def test_tick_collects_everything_once_the_interval_has_passed(monkeypatch):
    clock = Clock()
    collections = FullCollections(interval=60, clock=clock)
    calls = []
    real_collect = gc.collect
    monkeypatch.setattr(collector.gc, "collect", lambda *a: calls.append(a) or real_collect(*a))
    collections.start()
    try:
        dead = _old_cycle(real_collect)
        real_collect(1)
        assert dead() is not None  # only a full collection frees it
        collections.tick()
        clock.now += 59
        collections.tick()
        assert calls == [] and dead() is not None
        clock.now += 1
        collections.tick()
        assert calls == [()]  # a full collection
        assert dead() is None
        clock.now += 30
        collections.tick()
        assert len(calls) == 1  # the next one an interval later
        clock.now += 30
        collections.tick()
        assert len(calls) == 2
    finally:
        collections.stop()


def test_the_server_loop_runs_full_collections_itself():
    before = gc.get_threshold()
    server = create_server(falcon.App(), "127.0.0.1", 0, threads=1)

    def run():
        try:
            server.run()
        except SystemExit:
            pass  # how the test stops it, as SIGTERM does

    def stop():
        raise SystemExit(0)

    def set_by_the_loop():
        now = gc.get_threshold()
        return [now] if now[2] != before[2] else None

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        # poll, not poll_until: the assertions below decide, after the loop is stopped.
        during = poll(set_by_the_loop, 5, 0.01)
    finally:
        server.mailbox.post(stop)
        thread.join(5)
        server.close()
    assert during and during[0][2] >= 1 << 30
    assert gc.get_threshold() == before, "the loop's schedule outlived the loop"
