"""A standby orchestrator (PostgreSQL state_db, docs/ha.md): it serves the standby's
application (api/leadership.py) while it polls the leader lease, every third of its ttl;
once the lease has expired it takes it (a new epoch), builds everything as a start does,
and hands the new application to the running server (``server.swap``).

The build runs while the lease is already renewed (``Keeper``): loading a large state
may take longer than the ttl.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .errors import StoreError
from .lease import Keeper, Lease

log = logging.getLogger(__name__)

# A standby asks at least this often (seconds), a third of the ttl when that is shorter:
# a leader's crash costs the rest of its lease plus this plus the load (issue #20: writes
# again within 10 s), for one cheap UPDATE per second per standby.
POLL = 1.0


class Standby:
    """The poll of a standby; ``leader_url()`` is the URL its 503 answers give."""

    def __init__(self, lease: Lease, keeper: Keeper, take_over: Callable[[], None],
                 on_failure: Callable[[str], None]) -> None:
        self.lease = lease
        self._keeper = keeper
        self._take_over = take_over
        self._on_failure = on_failure
        self._leader: tuple[str | None, int | None] = (None, None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="standby", daemon=True)

    def leader_url(self) -> str | None:
        return self._leader[0]

    def leader_epoch(self) -> int | None:
        return self._leader[1]

    def read(self) -> None:
        """The lease as it is now: who leads, unless it expired."""
        leader = self.lease.leader()
        if leader is None or leader.expired:
            self._leader = (None, None)
        else:
            self._leader = (leader.url, leader.epoch)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        lease = self.lease
        while not self._stop.wait(min(lease.ttl / 3, POLL)):
            try:
                if lease.acquire():
                    break
                self.read()
            except StoreError as e:
                log.warning("standby: the leader lease cannot be read: %s", e)
        else:
            return
        log.warning("standby: the leader's lease expired: taking over (epoch %d), "
                    "loading the state", lease.epoch)
        self._leader = (lease.url, lease.epoch)
        self._keeper.start()
        try:
            self._take_over()
        except BaseException as e:  # noqa: BLE001 - reported, and the process stops
            log.exception("standby: taking over failed")
            self._on_failure(f"taking over failed: {e}")

