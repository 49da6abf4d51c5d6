"""The ``step`` and ``step_job`` tables: a step (its request kept as canonical JSON) and
one row per Slurm job of a step (``key`` = ``main`` or ``dm:<data mover>``).

A step's ``ended`` column is its last change once it ended (the start of its
step_retention), NULL while it is followed: a start loads the steps without it
(``load_live``); the ended ones are read on demand (``load_one``), and the lists read
their status as stored with their rows, not their request and jobs (``listed_after``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import ujson

from ..model import StepPhase
from ..steps.records import Step, StepJob
from ..steps.request import StepRequest

if TYPE_CHECKING:
    from ..store import Statement, Store

# The request, user, creation time and mover secret of a step never change after its launch.
_STEP_UPSERT = (
    "INSERT INTO step (name, \"user\", request, launch_id, phase, detail, abort_requested, created,"
    " updated, mover_secret, ended, status, status_detail) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT(name) DO UPDATE SET phase=excluded.phase, detail=excluded.detail,"
    " abort_requested=excluded.abort_requested, updated=excluded.updated, ended=excluded.ended,"
    " status=excluded.status, status_detail=excluded.status_detail"
)
_JOB_UPSERT = (
    "INSERT INTO step_job (step, key, job_id, state, reason, nodes, exit_code, progress,"
    " progress_time, updated) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(step, key) DO UPDATE SET"
    " job_id=excluded.job_id, state=excluded.state, reason=excluded.reason,"
    " nodes=excluded.nodes, exit_code=excluded.exit_code, progress=excluded.progress,"
    " progress_time=excluded.progress_time, updated=excluded.updated"
)
# A step forgotten (step_retention) is deleted by name and launch id: a step launched again
# under its name meanwhile keeps its row, and its jobs (those of the forgotten one went
# with that launch: clear_jobs).
_FORGET_STEP = "DELETE FROM step WHERE name = ? AND launch_id = ?"
_FORGET_JOBS = ("DELETE FROM step_job WHERE step = ? AND NOT EXISTS "
                "(SELECT 1 FROM step WHERE name = step_job.step)")
_CLEAR_JOBS = "DELETE FROM step_job WHERE step = ?"

_JOB_SELECT = ("SELECT step, key, job_id, state, reason, nodes, exit_code, progress,"
               " progress_time, updated FROM step_job")
_LIVE = ("SELECT name, \"user\", request, launch_id, phase, detail, abort_requested, created,"
         " updated, mover_secret FROM step WHERE ended IS NULL ORDER BY created, name")
_LIVE_JOBS = ("SELECT step, key, job_id, state, reason, nodes, exit_code, progress,"
              " progress_time, updated FROM step_job"
              " WHERE step IN (SELECT name FROM step WHERE ended IS NULL)")
_ONE = ("SELECT name, \"user\", request, launch_id, phase, detail, abort_requested, created,"
        " updated, mover_secret FROM step WHERE name = ?")
_ENDED_BEFORE = "SELECT name, launch_id FROM step WHERE ended < ? LIMIT ?"
_LISTED_FIRST = ("SELECT created, name, \"user\", phase, status, status_detail, ended FROM step"
                 " ORDER BY created, name LIMIT ?")
_LISTED_AFTER = ("SELECT created, name, \"user\", phase, status, status_detail, ended FROM step"
                 " WHERE (created, name) > (?, ?) ORDER BY created, name LIMIT ?")
_LISTED_LAST = ("SELECT created, name, \"user\", phase, status, status_detail, ended FROM step"
                " ORDER BY created DESC, name DESC LIMIT ?")
_LISTED_USER_FIRST = ("SELECT created, name, \"user\", phase, status, status_detail, ended"
                      " FROM step WHERE \"user\" = ? ORDER BY created, name LIMIT ?")
_LISTED_USER_AFTER = ("SELECT created, name, \"user\", phase, status, status_detail, ended"
                      " FROM step WHERE \"user\" = ? AND (created, name) > (?, ?)"
                      " ORDER BY created, name LIMIT ?")
# The ended steps by status (an index-only scan of step_status), and the status stored for
# those of them named.
_COUNT_ENDED = "SELECT status, count(*) FROM step WHERE ended IS NOT NULL GROUP BY status"
_ENDED_STATUS_OF = "SELECT status FROM step WHERE ended IS NOT NULL AND name IN "
_LISTED_ONE = ("SELECT created, name, \"user\", phase, status, status_detail, ended FROM step"
               " WHERE name = ?")
# Names per "IN (...)" of a read: below SQLite's smallest limit of variables (999).
_IN_CHUNK = 500


def save_step(s: Step, ended: float | None = None, status: tuple[str, str] = ("", "")
              ) -> Statement:
    """Record this version of a step; ``ended``: its last change if it ended, else None, and
    then ``status``: its (status, detail) derived from the records written with it."""
    return (_STEP_UPSERT, (s.name, s.user, ujson.dumps(s.request.canonical(), sort_keys=True),
                           s.launch_id, str(s.phase), s.detail, s.abort_requested, s.created,
                           s.updated, s.mover_secret, ended, *status))


def save_job(j: StepJob) -> Statement:
    """Record this version of one of a step's jobs."""
    return (_JOB_UPSERT, (j.step, j.key, j.job_id, j.state, j.reason, j.nodes, j.exit_code,
                          j.progress, j.progress_time, j.updated))


def clear_jobs(name: str) -> Statement:
    """Drop the job rows left under ``name`` by a forgotten step (before a new launch of it)."""
    return (_CLEAR_JOBS, (name,))


def forget(steps: Iterable[tuple[str, str]]) -> list[Statement]:
    """Drop the rows of ended steps, given as (name, launch id), and of their jobs
    (step_retention): the steps first, so that each kind runs as one executemany."""
    steps = list(steps)
    return ([(_FORGET_STEP, (name, launch_id)) for name, launch_id in steps]
            + [(_FORGET_JOBS, (name,)) for name, _ in steps])


def _step(row: Sequence[Any]) -> Step:
    (name, user, request, launch_id, phase, detail, abort_requested, created, updated,
     secret) = row
    return Step(name, user, StepRequest.from_canonical(ujson.loads(request)), launch_id,
                StepPhase(phase), detail, abort_requested, created, updated, secret)


def _job(row: Sequence[Any]) -> StepJob:
    return StepJob(*row)


def load_live(store: Store) -> tuple[list[Step], list[StepJob]]:
    """The steps not known to have ended, in the order of the step lists (created, then
    name), and their jobs."""
    steps = [_step(row) for row in store.rows(_LIVE)]
    jobs = [_job(row) for row in store.rows(_LIVE_JOBS)]
    return steps, jobs


def _jobs_of(store: Store, names: Sequence[str]) -> dict[str, dict[str, StepJob]]:
    out: dict[str, dict[str, StepJob]] = {name: {} for name in names}
    for i in range(0, len(names), _IN_CHUNK):
        part = names[i:i + _IN_CHUNK]
        # Only placeholders are joined into the statement.
        in_part = _JOB_SELECT + f" WHERE step IN ({','.join('?' * len(part))})"  # noqa: S608
        for row in store.rows(in_part, part):
            job = _job(row)
            out[job.step][job.key] = job
    return out


def load_one(store: Store, name: str) -> tuple[Step, dict[str, StepJob]] | None:
    """A step and its jobs as committed, or None."""
    rows = list(store.rows(_ONE, (name,)))
    if not rows:
        return None
    return _step(rows[0]), _jobs_of(store, [name])[name]


class Listed(NamedTuple):
    """A step as the lists read it from the database: its key, its user, and for an ended
    step its status as derived when its rows were last written (``ended`` None while it is
    followed: its records in memory say more)."""

    created: float
    name: str
    user: str
    phase: str
    status: str
    detail: str
    ended: float | None


def listed_after(store: Store, after: tuple[float, str] | None, limit: int,
                 user: str | None = None) -> list[Listed]:
    """At most ``limit`` steps (of ``user``) after key ``after`` = (created, name) in the
    order of the step lists, as committed."""
    if user is None:
        rows = (store.rows(_LISTED_FIRST, (limit,)) if after is None
                else store.rows(_LISTED_AFTER, (*after, limit)))
    else:
        rows = (store.rows(_LISTED_USER_FIRST, (user, limit)) if after is None
                else store.rows(_LISTED_USER_AFTER, (user, *after, limit)))
    return list(map(Listed._make, rows))


def listed_last(store: Store, limit: int) -> list[Listed]:
    """The last ``limit`` steps in the order of the step lists, as committed, oldest first
    (read backwards along the step_order index)."""
    return list(map(Listed._make, store.rows(_LISTED_LAST, (limit,))))[::-1]


def listed(store: Store, name: str) -> Listed | None:
    """Step ``name`` as the lists read it, or None."""
    return next(map(Listed._make, store.rows(_LISTED_ONE, (name,))), None)


def ended_before(store: Store, cutoff: float, limit: int) -> list[tuple[str, str]]:
    """(name, launch id) of at most ``limit`` steps that ended before ``cutoff``."""
    return list(store.rows(_ENDED_BEFORE, (cutoff, limit)))


def count_ended(store: Store, but: Iterable[str]) -> dict[str, int]:
    """The ended steps by their stored status, but for those named in ``but``."""
    out = dict(store.rows(_COUNT_ENDED))
    names = list(but)
    for i in range(0, len(names), _IN_CHUNK):
        part = names[i:i + _IN_CHUNK]
        # Only placeholders are joined into the statement (a list of them rather than
        # SQLite's json_each: the same SQL for PostgreSQL).
        in_part = _ENDED_STATUS_OF + f"({','.join('?' * len(part))})"  # noqa: S608
        for (status,) in store.rows(in_part, part):
            out[status] -= 1
            if not out[status]:
                del out[status]
    return out
