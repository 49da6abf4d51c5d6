"""The resource manager's lock, which refuses while its state is not the durable one.

A refused commit leaves in memory changes the state database does not have: the
resource manager reads its state again (``ResourceManager._resync``). When that read
fails too (the database unreachable: a PostgreSQL failover or switchover, a restart),
the records in memory are no one's truth, and deciding anything on them would grant
cores twice or answer for reservations that do not exist. So, until a read succeeds,
every use of the lock raises ``StateNotLoaded`` (answered 503: nothing was done, the
request is safe to send again) instead of serving from them; the reader retries
meanwhile (``held`` takes the lock whatever the state).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from types import TracebackType

from .errors import StateNotLoaded


class StateLock:
    """A lock whose ``with`` raises ``StateNotLoaded`` while ``stale`` says why."""

    __slots__ = ("_lock", "stale")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.stale: str | None = None

    def __enter__(self) -> None:
        # Refused at once while stale, without waiting for the lock: the read that
        # holds it meanwhile may wait seconds for an unreachable database, and a
        # request served on the event loop must not.
        stale = self.stale
        if stale is None:
            self._lock.acquire()
            stale = self.stale
            if stale is None:
                return
            self._lock.release()
        raise StateNotLoaded(stale)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._lock.release()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """The lock, stale or not: for the read that makes the state current again."""
        with self._lock:
            yield
