"""Who may read the state database's files: the service's user only, whatever the umask.

The database and its ``-wal`` hold users' Slurm tokens and every step's
command and environment, so the directory is 0700 and every file 0600:

* a directory the store creates is made 0700;
* an existing directory open to others is closed (chmod 0700, logged) only
  when the service's user owns it and nothing in it is meant for others
  (every other entry is the service user's and closed to group and others):
  closing it then takes nothing from anyone. Otherwise the store refuses to
  start, naming the directory and the fix, rather than chmod a shared
  directory (``/var/lib``, ``/tmp``) or trust one that another user owns;
* the lock and the database are created 0600 by the store itself, before
  SQLite opens the database: SQLite creates ``-wal``, ``-shm`` and
  ``-journal`` with the database's mode (and owner), not with the umask's;
* existing files that are too open (from an older version, a restore, a
  copy) are closed to 0600 at start, logged.

No ``umask()`` is set: it is process-wide, and threads may be running.
"""

from __future__ import annotations

import logging
import os
import stat

from .errors import StoreError

log = logging.getLogger(__name__)

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
OPEN_TO_OTHERS = 0o077
# The files beside the database that belong to it (SQLite's and the store's lock).
SUFFIXES = ("", "-wal", "-shm", "-journal", ".lock")


def own_files(db: str) -> list[str]:
    """The database's files (those that may exist)."""
    return [db + suffix for suffix in SUFFIXES]


def prepare_directory(directory: str, db: str) -> None:
    """Create ``directory`` 0700, or make sure nobody but the service's user can use it."""
    try:
        os.mkdir(directory, DIRECTORY_MODE)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(directory), exist_ok=True)  # parents: the default mode
        os.mkdir(directory, DIRECTORY_MODE)
    except FileExistsError:
        pass
    else:
        os.chmod(directory, DIRECTORY_MODE)  # the umask may have removed the owner's bits
        return
    info = os.stat(directory)
    fix = (f"give state_db a directory of its own (e.g. /var/lib/wfm-orchestrator/state.db, "
           f"created 0700 by the orchestrator) or run chmod 0700 {directory}")
    if info.st_uid not in (os.geteuid(), 0):
        # Its owner can open it to others, or swap our files, at any time.
        raise StoreError(
            f"state_db {db}: its directory {directory} belongs to uid {info.st_uid}, not to "
            f"the orchestrator's user (uid {os.geteuid()}) or root: {fix}")
    mode = stat.S_IMODE(info.st_mode)
    if not mode & OPEN_TO_OTHERS:
        return
    if info.st_uid != os.geteuid():
        raise StoreError(
            f"state_db {db}: its directory {directory} (mode {mode:04o}, owned by root) is "
            f"open to other users: {fix}")
    shared = _entry_for_others(directory, db)
    if mode & stat.S_ISVTX or shared is not None:
        raise StoreError(
            f"state_db {db}: its directory {directory} (mode {mode:04o}) is open to other "
            f"users and is shared ({shared or 'sticky bit'}): {fix}")
    os.chmod(directory, DIRECTORY_MODE)
    log.warning("state database: directory %s was open to other users (mode %04o): "
                "now %04o", directory, mode, DIRECTORY_MODE)


def _entry_for_others(directory: str, db: str) -> str | None:
    """An entry of ``directory`` (other than the database's files) meant for others."""
    ours = {os.path.basename(f) for f in own_files(db)}
    uid = os.geteuid()
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name in ours:
                continue
            info = entry.stat(follow_symlinks=False)
            if info.st_uid != uid or (stat.S_IMODE(info.st_mode) & OPEN_TO_OTHERS
                                      and not stat.S_ISLNK(info.st_mode)):
                return entry.path
    return None


def open_private(path: str, flags: int) -> int:
    """``os.open(path, flags | O_CREAT)``, the file 0600 whatever the umask (too open: closed)."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    try:
        _close_to_others(path, fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def tighten(db: str) -> None:
    """Create the database 0600 if it is missing; close its existing files to others."""
    os.close(open_private(db, os.O_RDONLY))
    for path in own_files(db)[1:]:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            continue
        try:
            _close_to_others(path, fd)
        finally:
            os.close(fd)


def _close_to_others(path: str, fd: int) -> None:
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode == FILE_MODE:
        return
    os.fchmod(fd, FILE_MODE)
    if mode & OPEN_TO_OTHERS:
        log.warning("state database: %s was open to other users (mode %04o): now %04o",
                    path, mode, FILE_MODE)
