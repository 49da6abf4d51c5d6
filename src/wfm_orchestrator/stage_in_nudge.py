"""Slurm 22.05 does not schedule a job when its burst-buffer stage-in completes.

``burst_buffer_lua.c`` of 22.05 asks slurmctld to schedule when a stage-in completes only
if the stage-in had a size (``queue_job_scheduler()`` inside ``if (total_size)``); the
plugin's directives have none. Such a job then starts at Slurm's next scheduling pass:
the next event (a job submitted, ended or updated) or the periodic passes, every
``sched_interval`` (60 s by default) and backfill's ``bf_interval`` (30 s by default). On
the mini-cluster (2 s and 1 s) that is quick; on a site with the defaults a service's
job, its burst buffer set up, could wait half a minute while a Session Manager's create
job waits for it. 24.11 schedules after every stage-in.

So on 22.05 the follower, which reads every job anyway, updates a job that has been
PENDING with its stage-in done (``BurstBufferState=staged-in``) for ``after`` seconds,
with its own comment: the update changes nothing of the job, and slurmctld schedules
after every job update. One update makes Slurm look at every job; each job is nudged at
most once (a job still pending after that waits for something else: resources, a hold).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from .errors import WfmError
from .follower import JobIndex

log = logging.getLogger(__name__)

STAGED_IN = "staged-in"  # Slurm's BurstBufferState once setup and data_in succeeded


class Touching(Protocol):
    @property
    def schedules_after_stage_in(self) -> bool: ...

    def touch(self, job_id: int, comment: str) -> bool: ...


class StageInNudge:
    """A reader of the follower's job lists (``Follower.add_reader``)."""

    def __init__(self, slurm: Touching, after: float = 4.0,
                 clock: Callable[[], float] = time.monotonic):
        self.slurm = slurm
        self.after = after
        self.clock = clock
        self._since: dict[int, float] = {}  # job id -> first seen staged-in and PENDING
        self._nudged: set[int] = set()

    def __call__(self, jobs: JobIndex) -> None:
        try:
            if self.slurm.schedules_after_stage_in:  # may ask slurmrestd its version
                return
        except WfmError:
            return  # the follower has just read the jobs: the next cycle will tell
        now = self.clock()
        waiting = {j.job_id: j for j in jobs.by_id.values()
                   if j.state == "PENDING" and j.burst_buffer_state == STAGED_IN}
        self._since = {i: self._since.get(i, now) for i in waiting}
        self._nudged &= set(waiting)
        due = sorted(i for i, since in self._since.items()
                     if now - since >= self.after and i not in self._nudged)
        if not due:
            return
        job = waiting[due[0]]
        self._nudged.update(due)  # one update schedules them all
        try:
            self.slurm.touch(job.job_id, job.comment)
        except WfmError as e:
            log.warning("could not ask Slurm to schedule job %d (staged in, still PENDING): "
                        "%s", job.job_id, e)
            return
        log.info("Slurm job%s %s staged in %.0f s ago and still PENDING (%s): asked Slurm "
                 "to schedule (22.05 does not after a stage-in without a size)",
                 "s" if len(due) > 1 else "", ", ".join(map(str, due)),
                 now - self._since[due[0]], job.reason or "no reason")


__all__ = ["STAGED_IN", "StageInNudge"]
