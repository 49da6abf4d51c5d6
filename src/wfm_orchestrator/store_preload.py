"""A start's read of its largest table by a process of its own, on the other CPU.

A restart with 100,000 live reservations spent 0.35 s of its ~0.9 s reading their rows
from SQLite and decoding their JSON, all under Python's lock, one CPU idle. A child
forked when the file is opened does that part and sends the decoded rows back in
``marshal`` chunks, while the server imports what serving needs and builds each chunk's
records as it comes (benchmarks/README.md, "Restart: a reader process").

It is an accelerator, never the truth: the child reads in one transaction of the file
whose lock the server already holds (nothing else writes it), only a file at the schema
version this code knows (``user_version``), and any failure of it (refused, killed, too
slow, a broken pipe) makes the caller read in-process instead (``PreloadLost`` when
records were already made from it).

``os.fork`` is only safe while the process has one thread: another thread may hold a lock
(SQLite's, the allocator's) that would stay locked in the child for ever. Hence the fork
happens before the store starts its threads, and not at all while any other runs
(``Preload.start`` returns None; tests start servers in threads).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import marshal
import os
import select
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .errors import PreloadLost

log = logging.getLogger(__name__)

CHUNK_ROWS = 5000
PIPE_BYTES = 1 << 20
# The child gets this long for each chunk (a start reads ~20 of them in 0.5 s in all); a
# child slower than that is given up and the rows read in-process.
CHUNK_TIMEOUT = 30.0
# Frames: a length, then marshal.dumps((kind, payload)).
_LENGTH = struct.Struct("<I")
_ROWS, _END, _REFUSED = 0, 1, 2
# Bytes 18 and 19 of an SQLite file: 2 and 2 once it is in WAL mode.
_WAL_HEADER = b"\x02\x02"

Decode = Callable[[Sequence[tuple[Any, ...]]], list[Any]]


class Preload:
    """The child reading ``sql`` from ``path`` and its pipe (``start``)."""

    def __init__(self, pid: int, fd: int, path: str) -> None:
        self._pid = pid
        self._fd = fd
        self._path = path
        self._buffer = bytearray()

    @classmethod
    def start(cls, path: str, sql: str, decode: Decode, schema: int,
              lock_fd: int) -> Preload | None:
        """The child reading ``sql``'s rows of the SQLite file ``path`` (whose lock the
        caller holds on ``lock_fd``: the child closes its copy, so that the lock goes with
        the server) and sending them through ``decode``; None where a child cannot help:
        another thread runs, one CPU only, no file yet or not in WAL (putting it in WAL
        wants the file alone), no ``fork``."""
        if (not hasattr(os, "fork") or threading.active_count() != 1
                or len(os.sched_getaffinity(0)) < 2 or not _in_wal(path)):
            return None
        rfd, wfd = os.pipe()
        # A chunk (~1 MB) in one write, not 16 rounds of the default 64 KB (the limit
        # for unprivileged processes is 1 MB: pipe-max-size)
        with contextlib.suppress(OSError):
            fcntl.fcntl(wfd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        try:
            pid = os.fork()
        except OSError as e:
            os.close(rfd)
            os.close(wfd)
            log.warning("state database %s: no reader process (%s): read in-process", path, e)
            return None
        if pid == 0:  # the child: never returns
            code = 1
            try:
                # Short-lived, and everything it makes lives until sent: collections
                # would only walk it (they doubled its time).
                gc.disable()
                os.close(rfd)
                os.close(lock_fd)
                _send(path, sql, decode, schema, wfd)
                code = 0
            finally:
                os._exit(code)
        os.close(wfd)
        return cls(pid, rfd, path)

    def chunks(self) -> Iterator[list[Any]] | None:
        """The decoded rows, a chunk at a time; None when the child refused before sending
        any (another schema version, an error): read in-process. Raises ``PreloadLost``
        when it fails after its first chunk."""
        try:
            kind, payload = self._frame()
        except (OSError, ValueError, EOFError, TypeError) as e:
            self._lost(e)
            return None
        if kind == _REFUSED:
            log.info("state database %s: the reader process did not read it (%s): read "
                     "in-process", self._path, payload)
            self.close()
            return None
        return self._rest(kind, payload)

    def _rest(self, kind: int, payload: Any) -> Iterator[list[Any]]:
        try:
            while kind == _ROWS:
                yield payload
                kind, payload = self._frame()
            if kind != _END:
                raise ValueError(payload if kind == _REFUSED else f"unexpected frame {kind}")
        except (OSError, ValueError, EOFError, TypeError) as e:
            self._lost(e)
            raise PreloadLost(str(e)) from e
        finally:  # also when the caller stops reading (closes this): the child ends
            self.close()

    def _frame(self) -> tuple[int, Any]:
        header = self._read(_LENGTH.size)
        (length,) = _LENGTH.unpack(header)
        return marshal.loads(self._read(length))  # noqa: S302 - our child, our pipe alone

    def _read(self, n: int) -> bytes:
        buf = self._buffer
        while len(buf) < n:
            ready, _, _ = select.select([self._fd], [], [], CHUNK_TIMEOUT)
            if not ready:
                raise TimeoutError(f"no rows from the reader process in {CHUNK_TIMEOUT:.0f} s")
            data = os.read(self._fd, max(1 << 20, n - len(buf)))
            if not data:
                raise EOFError("the reader process ended before its last rows")
            buf += data
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def _lost(self, error: BaseException) -> None:
        log.warning("state database %s: the reader process failed (%s): read in-process",
                    self._path, error)
        self.close()

    def close(self) -> None:
        """End the child (a no-op once done) and reap it."""
        if self._fd < 0:
            return
        os.close(self._fd)  # a child still writing gets EPIPE and ends
        self._fd = -1
        deadline = time.monotonic() + 5.0
        while True:
            done, _status = os.waitpid(self._pid, os.WNOHANG)
            if done:
                return
            if time.monotonic() > deadline:
                os.kill(self._pid, 9)
                os.waitpid(self._pid, 0)
                return
            time.sleep(0.001)


def _in_wal(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            header = fh.read(20)
    except OSError:
        return False
    return header[:16] == b"SQLite format 3\0" and header[18:20] == _WAL_HEADER


def _send(path: str, sql: str, decode: Decode, schema: int, fd: int) -> None:
    """The child's work: ``sql``'s rows through ``decode`` to ``fd``, in one transaction."""
    try:
        # The server's CPU is the one the parent is pinned to later; the kernel spreads
        # this one to the other (nothing pins it).
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("BEGIN")  # one snapshot for the version and every row
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version != schema:
                _write(fd, (_REFUSED, f"schema version {version}, not {schema}"))
                return
            cursor = conn.execute(sql)
            while rows := cursor.fetchmany(CHUNK_ROWS):
                _write(fd, (_ROWS, decode(rows)))
            conn.execute("COMMIT")
        finally:
            conn.close()
    except (sqlite3.Error, ValueError, TypeError, KeyError) as e:
        _write(fd, (_REFUSED, str(e)))
        return
    _write(fd, (_END, None))


def _write(fd: int, frame: tuple[int, Any]) -> None:
    data = marshal.dumps(frame)
    view = memoryview(_LENGTH.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]
