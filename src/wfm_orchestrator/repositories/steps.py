"""The ``step`` and ``step_job`` tables: a step (its request kept as canonical JSON) and
one row per Slurm job of a step (``key`` = ``main`` or ``dm:<data mover>``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import ujson

from ..model import StepPhase
from ..steps.records import Step, StepJob
from ..steps.request import StepRequest

if TYPE_CHECKING:
    from ..store import Statement, Store

# The request, user, creation time and mover secret of a step never change after its launch.
_STEP_UPSERT = (
    "INSERT INTO step (name, user, request, launch_id, phase, detail, abort_requested, created,"
    " updated, mover_secret) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET"
    " phase=excluded.phase, detail=excluded.detail, abort_requested=excluded.abort_requested,"
    " updated=excluded.updated"
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


def save_step(s: Step) -> Statement:
    """Record this version of a step."""
    return (_STEP_UPSERT, (s.name, s.user, ujson.dumps(s.request.canonical(), sort_keys=True),
                           s.launch_id, str(s.phase), s.detail, s.abort_requested, s.created,
                           s.updated, s.mover_secret))


def save_job(j: StepJob) -> Statement:
    """Record this version of one of a step's jobs."""
    return (_JOB_UPSERT, (j.step, j.key, j.job_id, j.state, j.reason, j.nodes, j.exit_code,
                          j.progress, j.progress_time, j.updated))


def clear_jobs(name: str) -> Statement:
    """Drop the job rows left under ``name`` by a forgotten step (before a new launch of it)."""
    return (_CLEAR_JOBS, (name,))


def forget(steps: list[Step]) -> list[Statement]:
    """Drop the rows of ended steps and of their jobs (step_retention): the steps first, so
    that each kind runs as one executemany."""
    return ([(_FORGET_STEP, (s.name, s.launch_id)) for s in steps]
            + [(_FORGET_JOBS, (s.name,)) for s in steps])


def load_steps(store: Store) -> list[Step]:
    """Every stored step, in the order of the step lists (created, then name)."""
    return [Step(row["name"], row["user"],
                 StepRequest.from_canonical(ujson.loads(row["request"])), row["launch_id"],
                 StepPhase(row["phase"]), row["detail"], row["abort_requested"], row["created"],
                 row["updated"], row["mover_secret"])
            for row in store.query("SELECT * FROM step ORDER BY created, name")]


def load_jobs(store: Store) -> list[StepJob]:
    return [StepJob(row["step"], row["key"], row["job_id"], row["state"], row["reason"],
                    row["nodes"], row["exit_code"], row["progress"], row["progress_time"],
                    row["updated"])
            for row in store.query("SELECT * FROM step_job")]
