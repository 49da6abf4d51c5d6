"""The orchestrator's store on the HA cluster (issue #20 item 1): kill -9 of the primary
under a steady load of store writes; the store's writes resume on the new primary
through the same state_db URL, and every write it acknowledged is there.

On the session's cluster (tests/conftest.py's ``ha_dsn``: brought up when it does not
run), not a fresh one: `up` at the end brings the killed node back as the replica.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.poll import poll_until

from .cluster import by_role, kill9, status, up

pytestmark = pytest.mark.ha

FAILOVER_BOUND = 30.0  # as test_hacluster.py: issue #20's goal for a node failure
UPSERT = ("INSERT INTO datanode_drain (name, reason, since) VALUES (?, ?, ?)"
          " ON CONFLICT(name) DO UPDATE SET reason = excluded.reason, since = excluded.since")


class StoreWriter(threading.Thread):
    """Writes d0, d1, ... through the store, two writers' worth of requests at a time,
    and records each write whose ticket committed (acknowledged) and when; a refused or
    timed-out write is neither (it may be there or not)."""

    def __init__(self, store):
        super().__init__(daemon=True, name="store-writer-test")
        self.store = store
        self.acked: list[tuple[str, float]] = []
        self.refused: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        from wfm_orchestrator.errors import StoreError

        i = 0
        while not self.stopping.is_set():
            names = [f"d{i}", f"d{i + 1}"]
            i += 2
            tickets = [self.store.write([(UPSERT, (n, "test", time.time()))]) for n in names]
            for name, ticket in zip(names, tickets, strict=True):
                try:
                    ticket.wait(timeout=60)
                    self.acked.append((name, time.monotonic()))
                except StoreError as e:
                    if not self.refused or self.refused[-1] != str(e):
                        self.refused.append(str(e))
            self.stopping.wait(0.005)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=90)
        assert not self.is_alive(), "the writer did not stop"

    def assert_none_lost(self, state_db: str) -> None:
        """Every acknowledged write is in the database (read after the failure)."""
        from tests.conftest import connect_db

        acked = {name for name, _ in self.acked}
        with connect_db(state_db) as conn:
            present = {row[0] for row in
                       conn.execute("SELECT name FROM datanode_drain").fetchall()}
        lost = sorted(acked - present)
        assert not lost, f"{len(lost)} acknowledged writes lost, the first {lost[:10]}"


def test_store_writes_resume_after_kill9_of_the_primary_and_none_acknowledged_is_lost(
        pg_state_db):
    from wfm_orchestrator.store import Store

    old = by_role(status())["primary"]
    store = Store(pg_state_db)
    writer = StoreWriter(store)
    writer.start()
    try:
        poll_until(lambda: len(writer.acked) >= 200, "200 writes acknowledged before the kill",
                   timeout=30, last=lambda: writer.refused[-3:])
        killed_at = time.monotonic()
        kill9(old["patroni_pid"], old["pid"])
        count = len(writer.acked)
        # A backend of the killed postmaster may still commit for a moment: wait for 200
        # more, which only the new primary can acknowledge.
        poll_until(lambda: len(writer.acked) >= count + 200,
                   "200 more writes acknowledged after the kill", timeout=FAILOVER_BOUND + 30,
                   interval=0.5, last=lambda: writer.refused[-3:])
        gap = max(b - a for (_, a), (_, b) in zip(writer.acked, writer.acked[1:],
                                                  strict=False) if b > killed_at)
    finally:
        writer.stop()
        store.close()
    print(f"\n[ha] store through kill -9 of {old['name']}: {len(writer.acked)} writes "
          f"acknowledged, longest gap {gap:.1f} s, refused: {writer.refused[:3]}")
    assert gap < FAILOVER_BOUND
    writer.assert_none_lost(pg_state_db)
    up()  # the killed node back as the replica, for the tests after this one
    assert by_role(status())["replica"]["name"] == old["name"]
