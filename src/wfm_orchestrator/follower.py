"""The one follower of Slurm jobs: services and steps move forward on one read per cycle.

A *tracker* (the service manager, the step manager) says which of its records
are live and how to move one forward given Slurm's jobs; the follower does the
rest, on one worker thread that does all of their Slurm I/O:

* one ``GET /jobs`` per cycle for every tracker together, and none when no
  tracker has anything live;
* the outage: when slurmrestd (or slurmctld behind it) cannot be reached, the
  cycle stops, the failure is logged once per distinct error, every status
  says ``[Slurm unreachable: ...]`` (see :attr:`Follower.problem`) and the
  recovery is logged once; nothing is lost, the next cycle resumes;
* per-item isolation: a typed error while moving one record forward is logged
  and the cycle goes on with the next one (only "Slurm unreachable" stops it);
* cancel throttling (:class:`Cancels`): a cancel is sent again only after an
  interval, not at every cycle;
* the other reads of Slurm (:meth:`Follower.add_poll`: the datanodes' health,
  node_health.py) run on the same thread, at the start of each cycle;
* readers (:meth:`Follower.add_reader`) see every job list read (stage_in_nudge.py).

Which Slurm states are final, when a job counts as gone and how an exit status
reads live in :mod:`wfm_orchestrator.slurm.states`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

from .errors import SlurmError, SlurmUnavailable, WfmError
from .slurm.api import SlurmJobs
from .slurm.states import JobState
from .worker import Worker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobIndex:
    """Slurm's jobs as one cycle read them: by id, and by tag (the ``comment``) for adoption."""

    by_id: dict[int, JobState]
    by_tag: dict[str, list[JobState]]  # a tag is public (squeue): several jobs may carry it

    @classmethod
    def of(cls, jobs: Iterable[JobState]) -> JobIndex:
        listed = list(jobs)
        by_tag: dict[str, list[JobState]] = {}
        for j in listed:
            if j.comment:
                by_tag.setdefault(j.comment, []).append(j)
        return cls({j.job_id: j for j in listed}, by_tag)

    @cached_property
    def by_stem(self) -> dict[str, list[JobState]]:
        """The jobs by their tag's stem: the tag without its last ``:`` field (a service's
        nonce), so that the jobs of one record are found whatever nonce they were
        submitted with. Built on first use: only a cycle that looks for one pays for it."""
        by_stem: dict[str, list[JobState]] = {}
        for tag, listed in self.by_tag.items():
            stem = tag.rpartition(":")[0]
            if stem:
                by_stem.setdefault(stem, []).extend(listed)
        return by_stem

    def adoptable(self, tag: str, user: str, partition: str, what: str) -> JobState | None:
        """The job carrying ``tag`` that runs as ``user`` on ``partition``, if any.

        Any other job carrying the tag is a look-alike (someone copied the tag): it is
        never adopted, and logged, so the caller submits its own job.
        """
        found = None
        for job in self.by_tag.get(tag, ()):
            if job.runs_as(user, partition):
                found = found or job
            else:
                log_look_alike(what, job, user, partition)
        return found


def log_look_alike(what: str, job: JobState, user: str, partition: str) -> None:
    """A job that carries an item's tag or id but is someone else's: never taken as ours."""
    log.warning("%s: Slurm job %d of user %r on partition %r carries its tag but is not its "
                "job (expected user %r, partition %r): not adopted", what, job.job_id,
                job.user, job.partition, user, partition)


Advance = Callable[[JobIndex], None]


class Tracker(Protocol):
    """What the follower needs from a manager whose records follow Slurm jobs."""

    noun: str  # "service", "step": names an item in the logs

    def live(self) -> Sequence[tuple[str, Advance]]:
        """The records to move forward this cycle: (name, how to move it forward)."""
        ...


class Cancels:
    """When each cancel was sent (this run only): a cancel is sent again only after
    ``interval`` seconds, or at once when the caller knows the first one did not take."""

    def __init__(self, interval: float):
        self.interval = interval
        self._sent: dict[Hashable, float] = {}

    def due(self, key: Hashable, now: float, again: bool = False) -> bool:
        """Should the cancel of ``key`` be sent now? ``again``: Slurm undid the last one."""
        sent = self._sent.get(key)
        return sent is None or again or now - sent >= self.interval

    def sent(self, key: Hashable) -> float | None:
        return self._sent.get(key)

    def record(self, key: Hashable, now: float) -> None:
        self._sent[key] = now

    def forget(self, key: Hashable) -> None:
        self._sent.pop(key, None)


@dataclass
class Outage:
    """slurmrestd or slurmctld unreachable: what the statuses say ("" while reachable)."""

    problem: str = ""
    # The lines logged: a read failing (what waits meanwhile, the error), the recovery.
    failed: str = "cannot read Slurm jobs (%s wait): %s"
    back: str = "Slurm is reachable again"

    def read_failed(self, error: WfmError, waiting: str) -> None:
        if self.problem != str(error):
            log.warning(self.failed, waiting, error)
        self.problem = str(error)

    def lost(self, error: SlurmUnavailable, noun: str, name: str) -> None:
        self.problem = str(error)
        log.warning("Slurm unreachable while handling %s %s: %s", noun, name, error)

    def reached(self) -> None:
        if self.problem:
            log.info("%s", self.back)
        self.problem = ""


class Follower:
    """One worker thread following every tracker's Slurm jobs (see the module's text)."""

    def __init__(self, slurm: SlurmJobs | None, interval: float, stop_timeout: float,
                 flush: Callable[[], None] = lambda: None):
        self.slurm = slurm
        # The store's flush: the trackers record what they did (a job id, a state)
        # without waiting for the commit; handing it to the writer after each item
        # keeps it from waiting for some other thread's next commit.
        self._flush = flush
        self.outage = Outage()
        self._trackers: list[Tracker] = []
        self._polls: list[Callable[[], None]] = []
        self._readers: list[Callable[[JobIndex], None]] = []
        self.worker = Worker("slurm-follower", self.cycle, interval, stop_timeout)

    @property
    def problem(self) -> str:
        """Why Slurm cannot be reached now ("" when it can): every status shows it."""
        return self.outage.problem

    def add(self, tracker: Tracker) -> None:
        """Follow this tracker's records too (after those added before it, in each cycle)."""
        self._trackers.append(tracker)

    def add_poll(self, poll: Callable[[], None]) -> None:
        """Call ``poll`` at the start of every full cycle, on this thread: another read of
        Slurm (the datanodes' health); it decides itself whether one is due, and handles
        its own errors."""
        self._polls.append(poll)

    def add_reader(self, reader: Callable[[JobIndex], None]) -> None:
        """Hand ``reader`` every job list this thread reads, before the trackers move
        (stage_in_nudge.py); it handles its own errors."""
        self._readers.append(reader)

    @property
    def trackers(self) -> tuple[Tracker, ...]:
        return tuple(self._trackers)

    def wake(self) -> None:
        self.worker.wake()

    def start(self) -> None:
        if self.slurm is not None:
            self.worker.start()

    def stop(self) -> None:
        self.worker.stop()

    def cycle(self, trackers: Sequence[Tracker] | None = None) -> None:
        """One cycle: the polls (a full cycle only), then read every job in one call and
        move each live record forward."""
        assert self.slurm is not None
        if trackers is None:
            for poll in self._polls:
                poll()
                self._flush()  # what it admitted from the queue, to the writer now
        work = [(t, t.live()) for t in (self._trackers if trackers is None else trackers)]
        work = [(t, items) for t, items in work if items]
        if not work:
            return
        try:
            jobs = JobIndex.of(self.slurm.jobs())
        except (SlurmUnavailable, SlurmError) as e:
            self.outage.read_failed(e, " and ".join(f"{t.noun}s" for t, _ in work))
            return
        self.outage.reached()
        for reader in self._readers:
            reader(jobs)
        for tracker, items in work:
            for name, advance in items:
                try:
                    advance(jobs)
                except SlurmUnavailable as e:
                    self.outage.lost(e, tracker.noun, name)
                    return
                except WfmError as e:
                    log.error("%s %s: %s", tracker.noun, name, e)
                finally:
                    self._flush()
