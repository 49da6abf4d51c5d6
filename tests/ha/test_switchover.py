"""A planned switchover of the PostgreSQL primary (`deploy/hacluster switchover`,
Patroni's) under a client's load: a few seconds without a primary, shorter than the
leader lease, so the leading orchestrator may well lead through it. The batch in flight
at the switch is refused, and the reload that follows cannot read while no node is
primary (docs/ha.md, "A reload that cannot read"): the leader answers 503 until it can,
and must never serve from records read halfway (before that fix, it served from an empty
state and granted held cores again). After it: every acknowledged reservation is there
and no core is granted twice, on the leader's own answers and in the database.
On the session's cluster (tests/conftest.py's ``ha_dsn``).
"""

from __future__ import annotations

import time

import pytest

from tests.poll import poll_until

from .cluster import by_role, hacluster, status
from .test_leader_failover import Client, check_state, leader_and_standby, log_of, role

pytestmark = pytest.mark.ha

REREAD = "cannot be read after a refused commit"  # the leader's log line (resource_manager)


def rereads(url: str) -> int:
    """How many reloads that could not read the orchestrator at ``url`` has logged."""
    with open(log_of(url), encoding="utf-8") as log:
        return log.read().count(REREAD)


def test_a_switchover_under_a_client_load_loses_nothing(orchestrators, ha_dsn):
    old = by_role(status())["primary"]["name"]
    leader, standby = leader_and_standby()
    logged = {o["url"]: rereads(o["url"]) for o in (leader, standby)}
    client = Client([leader["url"], standby["url"]])
    client.start()
    try:
        poll_until(lambda: len(client.reserved) >= 20, timeout=30, what="a steady load")
        switched = time.monotonic()
        out = hacluster("switchover", timeout=120)
        assert out.returncode == 0, f"{out.stderr}\n{out.stdout}"
        took = time.monotonic() - switched
        count = len(client.reserved)
        poll_until(lambda: len(client.reserved) >= count + 20, timeout=60,
                   what="reservations acknowledged after the switchover")
    finally:
        client.stop()
    new = by_role(status())["primary"]["name"]
    assert new != old, f"{old} is still the primary"
    leading = [o for o in (leader, standby) if role(o["url"]) == "leader"]
    assert len(leading) == 1, leading
    refused = {url: rereads(url) - n for url, n in logged.items()}
    print(f"\n[ha] switchover {old} -> {new} in {took:.1f} s under a client's load; "
          f"{len(client.reserved)} reservations and {len(client.released)} releases "
          f"acknowledged; leading: {leading[0]['url']} (before: {leader['url']}); reloads "
          f"that could not read: {refused}")
    check_state(leading[0]["url"], client)
    import psycopg

    with psycopg.connect(ha_dsn, autocommit=True) as conn:
        stored = {r[0] for r in conn.execute("SELECT name FROM orchestrator.reservation")}
    lost = sorted(set(client.reserved) - stored)
    assert not lost, f"acknowledged reservations not in the database: {lost[:10]}"
